"""WorkerPool on a real Ray cluster: a killed actor's item is redone elsewhere, a poisonous item gets an error row.

These use a light worker class (real Ray actors, real result parts, no model) so the
fault paths are checked in seconds; tests/pipelines/test_reconstruct.py kills a real
reconstruction actor mid-job.
"""

import os
import signal
import sys
import time

import pytest

from cluster.config import ReconstructConfig
from cluster.pool import PoolStartError, WorkerPool
from cluster.results import RESULTS_SCHEMA, utc_now, write_part

pytestmark = pytest.mark.timeout(180)


class LightWorker:
    """The ReconstructionWorker interface without a model: a short sleep, then its row."""

    def __init__(self, config):
        assert isinstance(config, ReconstructConfig)  # the driver's validated config, shipped as is
        self.config = config
        if self.config.prior == "tiny:999":
            raise FileNotFoundError("prior weights missing (test)")

    def ready(self):
        return {"pid": os.getpid(), "device": "cpu"}

    def process(self, item, attempt=1):
        if item["image_id"] == "poison":
            os._exit(1)  # the process dies, as with a segfault or the OOM killer
        time.sleep(0.3)
        row = dict.fromkeys(RESULTS_SCHEMA.names)
        row.update(
            image_id=item["image_id"],
            uri=item["uri"],
            name=item["name"],
            task="sr4",
            mode="baseline",
            seed=0,
            image_seed=0,
            k=1,
            attempt=attempt,
            worker_pid=os.getpid(),
            finished_at=utc_now(),
        )
        write_part(self.config.out, row)
        return row


def _config(tmp_path, **kw):
    return ReconstructConfig(inputs="in", out=str(tmp_path), task="sr4", mode="baseline", num_actors=2, **kw)


def _items(names):
    return [{"image_id": n, "uri": f"/in/{n}.png", "name": n} for n in names]


@pytest.fixture(autouse=True)
def _pickle_light_worker_by_value(ray_cluster):
    # Ray workers need not import the tests package: ship this module's classes by value.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_a_killed_actor_item_is_redone_and_every_item_finishes_once(tmp_path):
    pool = WorkerPool(_config(tmp_path, max_restarts=2), worker_cls=LightWorker)
    killed = []

    def kill_a_busy_actor(row):
        if not killed and pool.busy_pids():
            killed.append(pool.busy_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    try:
        names = [f"img{i}" for i in range(8)]
        rows = pool.run(_items(names), kill_a_busy_actor)
    finally:
        pool.shutdown()
    assert killed
    assert sorted(r["image_id"] for r in rows) == names  # each exactly once
    assert all(r["error"] is None for r in rows)
    assert any(r["attempt"] == 2 for r in rows)  # the killed actor's item, done again
    assert killed[0] not in {r["worker_pid"] for r in rows if r["attempt"] == 2}


def test_an_item_that_kills_every_actor_it_meets_becomes_an_error_row(tmp_path):
    pool = WorkerPool(_config(tmp_path, max_restarts=3, max_attempts=2), worker_cls=LightWorker)
    try:
        rows = pool.run(_items(["a", "poison", "b", "c"]))
    finally:
        pool.shutdown()
    by_id = {r["image_id"]: r for r in rows}
    assert sorted(by_id) == ["a", "b", "c", "poison"]
    assert by_id["poison"]["stage"] == "worker" and "died 2 time(s)" in by_id["poison"]["error"]
    assert os.path.exists(tmp_path / "results" / "poison~error.parquet")
    assert all(by_id[n]["error"] is None for n in "abc")


def test_actors_that_cannot_start_fail_the_job_with_the_cause(tmp_path):
    with pytest.raises(PoolStartError, match="prior weights missing"):
        WorkerPool(_config(tmp_path, prior="tiny:999"), worker_cls=LightWorker)


def test_when_every_actor_is_out_of_restarts_the_job_stops_and_says_to_rerun(tmp_path):
    pool = WorkerPool(_config(tmp_path, max_restarts=0, max_attempts=3), worker_cls=LightWorker)
    try:
        with pytest.raises(RuntimeError, match="died for good; .* left undone. Rerun to resume"):
            pool.run(_items(["poison", "a"]))
    finally:
        pool.shutdown()
