"""A pool of reconstruction actors sized from the cluster, and the driver loop that survives dying actors."""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable, Iterable, Mapping

from adir_ops.allocator import worker_env
from cluster.config import ReconstructConfig
from cluster.results import new_row, utc_now, write_part

Row = dict[str, Any]
DEFAULT_CPU_SHARE = 0.5  # Ray num_cpus of a CPU actor unless --cpus-per-actor says otherwise (see actor_plan)
REPROBE_S = 0.5  # how often to ask a restarting actor whether it is back
START_GRACE_S = 60.0  # how long the first ready actor waits for the others before work starts


def actor_plan(
    resources: Mapping[str, float],
    *,
    num_actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float | None = None,
    work: int | None = None,
) -> tuple[int, dict[str, float]]:
    """(number of actors, ray options) for the cluster's resources (`ray.cluster_resources()`).

    With GPUs: one actor per GPU, `num_gpus=1` (Ray pins each actor to its device) and one
    CPU for decoding. Without: one actor per CPU core, each asking for half a CPU, so half
    the logical CPUs stay free for the driver and any Ray Data stage running beside the job
    (on a 2-CPU node, actors holding every CPU starve Ray Data's read tasks; NOTES.md).
    Ray sets each actor's torch/OpenMP threads from its num_cpus, so two actors on two
    cores each compute on one thread. Unless `num_actors` says otherwise, no more actors than
    `work` items: each actor loads the prior, so an idle one only costs start-up time and memory.
    """
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    if gpus >= 1 and gpus_per_actor != 0:
        per_actor = gpus_per_actor or 1.0
        count = num_actors or _at_most(max(1, int(gpus // per_actor)), work)
        return count, {"num_gpus": per_actor, "num_cpus": 1.0 if cpus_per_actor is None else cpus_per_actor}
    per_actor = DEFAULT_CPU_SHARE if cpus_per_actor is None else cpus_per_actor
    count = num_actors or _at_most(max(1, int(cpus)), work)
    return count, {"num_cpus": per_actor}


def actor_threads(
    resources: Mapping[str, float],
    options: Mapping[str, float],
    count: int,
    node_cpus: float | None = None,
    environ: Mapping[str, str] = os.environ,
) -> int | None:
    """Torch threads for each CPU actor, or None to keep Ray's rule (threads = the actor's num_cpus, at least 1).

    The default half-CPU actors would each compute on one thread, so when there are fewer actors
    than cores (one large image, `--num-actors 1`) the other cores sit idle. Then the cores are
    shared out instead: `CPU // count` threads each, never more than the largest node has
    (`node_cpus`; an actor's threads all run on its own node). Kept as Ray has it: GPU actors
    (the GPU computes), a `--cpus-per-actor` the user chose, and an OMP_NUM_THREADS the user set.
    """
    if "num_gpus" in options or "OMP_NUM_THREADS" in environ or options.get("num_cpus") != DEFAULT_CPU_SHARE:
        return None
    threads = max(1, int(float(resources.get("CPU", 1)) // max(1, count)))
    if node_cpus:
        threads = min(threads, max(1, int(node_cpus)))
    return threads if threads > 1 else None


def _largest_node_cpus() -> float | None:
    import ray

    try:
        return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=None)
    except Exception:  # a client that cannot list nodes: the cluster's total is the only bound left
        return None


def _at_most(count: int, work: int | None) -> int:
    return count if work is None else max(1, min(count, work))


class PoolStartError(RuntimeError):
    """The actors could not be built (missing weights, unreadable index, ...): a job-level failure."""


class WorkerPool:
    """`count` ReconstructionWorker actors; `run(items)` feeds them and resubmits work of dead ones.

    Fault tolerance: each actor restarts up to `max_restarts` times (Ray rebuilds it from the
    config); calls are not retried by Ray (`max_task_retries=0`) because the driver does it:
    an item whose actor died goes back to the front of the queue and is taken by the next
    free actor, while the dead one is probed and rejoins once restarted. An item that kills
    its actor `max_attempts` times gets an error row, so one poisonous image cannot stall the job.
    """

    def __init__(
        self,
        config: ReconstructConfig,
        *,
        resources: Mapping[str, float] | None = None,
        worker_cls=None,
        work: int | None = None,
    ):
        import ray

        from cluster.worker import ReconstructionWorker

        self.config = config
        resources = ray.cluster_resources() if resources is None else resources
        self.count, self.options = actor_plan(
            resources,
            num_actors=config.num_actors,
            cpus_per_actor=config.cpus_per_actor,
            gpus_per_actor=config.gpus_per_actor,
            work=work,
        )
        # Reused, not re-faulted, tensor memory in the actors' forwards (adir_ops/allocator.py).
        env = worker_env()
        self.threads = actor_threads(resources, self.options, self.count, node_cpus=_largest_node_cpus())
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)  # torch's intra-op threads in the actor
        remote = ray.remote(worker_cls or ReconstructionWorker).options(
            max_restarts=config.max_restarts,
            max_task_retries=0,
            **self.options,
            **({"runtime_env": {"env_vars": env}} if env else {}),
        )
        # The validated config itself (a frozen dataclass pickles): no actor validates it again.
        self.actors = [remote.remote(config) for _ in range(self.count)]
        self.info: list[dict[str, Any] | None] = [None] * self.count
        self.busy: dict[int, dict[str, Any]] = {}
        self.ready: list[int] = []
        # Work starts when every actor is up, or START_GRACE_S after the first one is: on an
        # autoscaling cluster the others may wait minutes for their nodes, and join later.
        # If every actor fails to start (missing weights, unreadable index, ...), that is the
        # job's error, raised here before any image is touched.
        self._starting = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        failure, deadline = None, None
        while self._starting:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(self._starting), num_returns=1, timeout=timeout)
            if not done:
                break
            ref = done[0]
            actor = self._starting.pop(ref)
            try:
                self.info[actor] = ray.get(ref)
                self.ready.append(actor)
                deadline = deadline or time.monotonic() + START_GRACE_S
            except ray.exceptions.RayActorError as exc:
                failure = exc
        if not self.ready:
            self.shutdown()
            raise PoolStartError(f"reconstruction actors could not start: {_cause(failure)}")

    def busy_pids(self) -> list[int]:
        """Process ids of actors that hold an item right now (what a fault-injection test kills)."""
        return [self.info[i]["pid"] for i in sorted(self.busy) if self.info[i]]

    def run(self, items: Iterable[Mapping[str, Any]], on_row: Callable[[Row], None] | None = None) -> list[Row]:
        """Process every item exactly once to a row (success or error) and return the rows in finishing order."""
        import ray

        pending = collections.deque(items)
        attempts: collections.Counter = collections.Counter()
        idle = collections.deque(self.ready)
        inflight: dict[Any, int] = {}  # ref -> actor index (its item is in self.busy)
        probes: dict[Any, int] = dict(self._starting)  # ref of a liveness probe -> actor index (first: still starting)
        self._starting = {}
        reprobe: list[tuple[float, int]] = []  # (when, actor) for actors still restarting
        rows: list[Row] = []

        def finish(row: Row) -> None:
            rows.append(row)
            if on_row is not None:
                on_row(row)

        def probe(actor: int) -> None:
            probes[self.actors[actor].ready.remote()] = actor

        while pending or inflight:
            while pending and idle:
                actor = idle.popleft()
                item = pending.popleft()
                attempts[item["name"]] += 1
                inflight[self.actors[actor].process.remote(dict(item), attempts[item["name"]])] = actor
                self.busy[actor] = dict(item)
            now = time.monotonic()
            for when, actor in [r for r in reprobe if r[0] <= now]:
                reprobe.remove((when, actor))
                probe(actor)
            if not inflight and not probes and not reprobe:
                raise RuntimeError(
                    f"every reconstruction actor died for good; {len(pending)} image(s) left undone. Rerun to resume"
                )
            timeout = max(0.0, min(w for w, _ in reprobe) - now) if reprobe else None
            ready, _ = (
                ray.wait([*inflight, *probes], num_returns=1, timeout=timeout) if inflight or probes else ([], None)
            )
            if not ready:
                if not inflight and not probes:
                    time.sleep(timeout or 0.0)
                continue
            ref = ready[0]
            if ref in probes:
                actor = probes.pop(ref)
                try:
                    self.info[actor] = ray.get(ref)
                    idle.append(actor)
                except ray.exceptions.ActorUnavailableError:
                    reprobe.append((time.monotonic() + REPROBE_S, actor))  # still restarting
                except ray.exceptions.RayActorError:
                    pass  # out of restarts: dead for good, never used again
                continue
            actor = inflight.pop(ref)
            item = self.busy.pop(actor)
            try:
                row = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                # process() turns image failures into rows; this is one it could not even
                # record (e.g. the output store refused the write). The actor is fine.
                idle.append(actor)
                if attempts[item["name"]] >= self.config.max_attempts:
                    finish(self._failed_row(item, attempts[item["name"]], exc, stage="write"))
                else:
                    pending.append(item)
                continue
            except ray.exceptions.RayActorError as exc:
                # The actor process died with this item (OOM, segfault, node lost, killed).
                if attempts[item["name"]] >= self.config.max_attempts:
                    finish(self._failed_row(item, attempts[item["name"]], exc))
                else:
                    pending.appendleft(item)  # the next free actor takes it: another one if any is idle
                probe(actor)
                continue
            idle.append(actor)
            finish(row)
        return rows

    def _failed_row(self, item: Mapping[str, Any], attempts: int, exc: BaseException, stage: str = "worker") -> Row:
        cfg = self.config
        error = (
            f"the actor died {attempts} time(s) while reconstructing this image; last: {_cause(exc)}"
            if stage == "worker"
            else f"failed {attempts} time(s): {_cause(exc)}"
        )
        row = new_row(
            cfg,
            item,
            attempts,
            stage=stage,
            error=error,
            finished_at=utc_now(),
            worker_pid=os.getpid(),
            worker_device="driver",
        )
        write_part(cfg.out, row, cfg.storage_options)
        return row

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray's message is long; the last lines carry the original exception.
    tail = [line for line in text if line.strip()][-3:]
    return " | ".join(tail)[:1000]
