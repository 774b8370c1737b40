"""The embed stage of the index build: the Ray Data pipeline (read/decode tasks → embed actors), its resources and progress."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pyarrow as pa

from adir_ops.allocator import worker_env
from index_builder.reader import ReadConfig, read_batch
from index_builder.sources import Shard
from index_builder.throughput import StageTimes
from index_builder.writer import ShardWriter

# The read tasks' nice value when the embed actors run on the CPU (reader.lower_priority says why).
# With GPUs the forward is not on the cores, and decode must keep the GPUs fed: normal priority.
READ_NICE = 19

# Rows per input block: enough blocks for the read stage to run in parallel, few enough
# that 1.7M images stay a few thousand blocks of driver-side metadata.
INPUT_BLOCK_ROWS = 256


def actor_resources(config: Any) -> dict[str, Any]:
    """map_batches resources of the embed stage, from the cluster: one actor per GPU, else CPU actors.

    CPU actors take fractional CPUs: on a small node, whole-CPU actors can take every CPU
    and starve the read stage forever (measured: 2 actors x 1 CPU on 2 CPUs deadlocks).
    The reservation only schedules; how many threads an actor's forward uses is
    `actor_threads`.
    """
    import ray
    from ray.data import ActorPoolStrategy

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    if gpus:
        return {
            "compute": ActorPoolStrategy(size=config.num_actors or gpus),
            "num_gpus": 1,
            "num_cpus": config.cpus_per_actor or 1,
        }
    actors = config.num_actors or max(1, int(cpus // 4))
    per_actor = config.cpus_per_actor or (0.5 if cpus <= 4 else min(4.0, cpus / (2 * actors)))
    return {"compute": ActorPoolStrategy(size=actors), "num_cpus": per_actor}


def actor_threads(config: Any, resources: dict[str, Any]) -> int:
    """torch threads of one embed actor: on CPU, the cluster's CPUs shared among the actors.

    The forward is the job's bottleneck by far (about 20 times a read's CPU per image on the
    default encoder: docs/throughput.md, "Earlier measurements"), so the actors' threads
    take every CPU and the read tasks overlap them, instead of the forward running on its
    fractional reservation (0.5 CPU → 1 thread, half the machine). An explicit
    `torch_threads`, or OMP_NUM_THREADS in the driver's environment, wins (Ray sets
    OMP_NUM_THREADS inside its workers itself, so it is read here, not there).
    """
    import ray

    if config.torch_threads:
        return config.torch_threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    if resources.get("num_gpus"):
        return max(1, int(resources.get("num_cpus", 1)))
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // resources["compute"].max_size))


def read_nice(config: Any, resources: dict[str, Any]) -> int:
    """The read tasks' nice value: the config's, else READ_NICE when the embed actors are CPU actors."""
    if config.read_nice is not None:
        return config.read_nice
    return 0 if resources.get("num_gpus") else READ_NICE


def _input_tables(shards: list[Shard]) -> list[pa.Table]:
    tables = []
    for shard in shards:
        for start in range(0, len(shard), INPUT_BLOCK_ROWS):
            ids = shard.image_ids[start : start + INPUT_BLOCK_ROWS]
            tables.append(
                pa.table(
                    {
                        "image_id": pa.array(ids, pa.string()),
                        "uri": pa.array(shard.uris[start : start + INPUT_BLOCK_ROWS], pa.string()),
                        "shard": pa.array([shard.index] * len(ids), pa.int64()),
                    }
                )
            )
    return tables


def embed_shards(
    config: Any, shards: list[Shard], embedder_name: str, dim: int, image_size: int
) -> tuple[ShardWriter, StageTimes]:
    """Run the Ray Data pipeline over `shards`, committing each as it completes; also return the stage timings."""
    import ray
    from ray.data import DataContext

    from index_builder.mapper import EmbedBatch

    writer = ShardWriter(config.out, shards, embedder_name, dim, config.storage_options)
    total = sum(len(s) for s in shards)
    resources = actor_resources(config)
    read_config = ReadConfig(
        image_size=image_size,
        max_image_pixels=config.max_image_pixels,
        max_bytes=config.max_input_bytes,
        nice=read_nice(config, resources),
        storage_options=dict(config.storage_options),
    )
    # Ray Data calls the actor from a thread of its own, where glibc would map and unmap every
    # activation tensor: the forward ran 4x slower, mostly in the kernel (adir_ops/allocator.py).
    # The settings must be in the environment when the actor's process starts.
    env = worker_env()
    if env:
        resources["runtime_env"] = {"env_vars": env}
    context = DataContext.get_current()
    previous_bars = context.enable_progress_bars
    context.enable_progress_bars = False  # our own bar below counts images and shards, not Ray blocks
    try:
        # from_blocks keeps one block per input table and computes block metadata here;
        # from_arrow would launch a remote metadata task per table (thousands at corpus scale).
        ds = ray.data.from_blocks(_input_tables(shards))
        ds = ds.map_batches(
            read_batch, fn_kwargs={"config": read_config}, batch_size=config.read_batch_size, batch_format="numpy"
        )
        ds = ds.map_batches(
            EmbedBatch,
            fn_constructor_kwargs={
                "embedder_name": config.embedder,
                "torch_threads": actor_threads(config, resources),
            },
            batch_size=config.batch_size,
            batch_format="numpy",
            **resources,
        )
        times = StageTimes()
        with _Progress(total, len(shards), enabled=config.progress) as progress:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                arrived = time.perf_counter()
                done = writer.add(batch)
                times.add_batch(batch, write_seconds=time.perf_counter() - arrived)
                progress.update(len(batch["image_id"]), len(done))
    finally:
        context.enable_progress_bars = previous_bars
    if writer.open_shards:
        raise RuntimeError(f"the pipeline ended with shards {writer.open_shards[:5]} incomplete; rerun to resume")
    return writer, times


class _Progress:
    """images done / total, rate and ETA (tqdm), plus committed shards."""

    def __init__(self, total: int, shards: int, enabled: bool):
        self.shards, self.committed = shards, 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit="img", desc="embedding", file=sys.stderr, mininterval=1.0, dynamic_ncols=True
            )

    def update(self, images: int, shards: int) -> None:
        self.committed += shards
        if self.bar is not None:
            self.bar.update(images)
            self.bar.set_postfix_str(f"shards {self.committed}/{self.shards}", refresh=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
