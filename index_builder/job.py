"""The index build job: list → shard → Ray Data (read/decode/resize → embed actors) → shard writer → FAISS."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from adir_ops.allocator import worker_env
from adir_ops.embedding import DEFAULT_EMBEDDER
from adir_ops.validation import check_fields
from adir_storage import join_url, remove_if_exists, remove_stale_temporaries
from index_builder.faiss_index import DEFAULT_TRAIN_SIZE, METRIC, build_faiss_index, check_factory, verify_index
from index_builder.manifest import MANIFEST_NAME, Manifest, ShardEntry, utc_now
from index_builder.reader import DEFAULT_MAX_IMAGE_PIXELS, ReadConfig, read_batch
from index_builder.sources import Shard, list_source, plan_shards
from index_builder.throughput import StageFigure, StageTimes, stage_table
from index_builder.writer import (
    EMBEDDINGS_DIR,
    ERRORS_DIR,
    ShardWriter,
    embeddings_url,
    is_committed,
    read_shard_footer,
    write_listing_errors,
)

# The read tasks' nice value when the embed actors run on the CPU (reader.lower_priority says why).
# With GPUs the forward is not on the cores, and decode must keep the GPUs fed: normal priority.
READ_NICE = 19

# Rows per input block: enough blocks for the read stage to run in parallel, few enough
# that 1.7M images stay a few thousand blocks of driver-side metadata.
INPUT_BLOCK_ROWS = 256


@dataclass(frozen=True)
class BuildConfig:
    """Everything `adir index build` resolves; recorded (minus storage_options) in the manifest."""

    source: str
    out: str
    embedder: str = DEFAULT_EMBEDDER
    # "auto": faiss_index.default_factory picks by the vector count once it is known; any other
    # value is a factory spec, "FACTORY[|search settings]", e.g. "IVF4096,PQ64,RFlat|nprobe=16,k_factor_rf=8".
    index_factory: str = "auto"
    shard_size: int = 1000
    limit: int | None = None
    ids_file: str | None = None
    url_template: str | None = None
    batch_size: int = 64  # images per embed-actor call
    read_batch_size: int = 32  # images per read/decode task call
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    num_actors: int | None = None  # None: one per GPU, else from the cluster's CPUs
    cpus_per_actor: float | None = None
    torch_threads: int | None = None  # per embed actor; None: $OMP_NUM_THREADS if set, else the CPUs per actor
    read_nice: int | None = None  # read tasks' nice value (0-19); None: READ_NICE with CPU actors, 0 with GPUs
    max_shards: int | None = None  # commit at most this many shards in this run (time-boxed jobs), then stop
    train_size: int = DEFAULT_TRAIN_SIZE
    gpu_index: bool | None = None  # None: GPU FAISS when faiss sees a GPU
    progress: bool = True
    # Endpoint/credentials for remote URLs; never written anywhere (see `record`).
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.storage_options is None:
            object.__setattr__(self, "storage_options", {})
        check_fields(self)
        if self.limit is not None and self.limit < 1:
            raise ValueError(
                f"--limit {self.limit} selects no images; pass --limit N with N >= 1, or leave it out for all"
            )
        for name in ("shard_size", "batch_size", "read_batch_size", "max_image_pixels", "train_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.max_shards is not None and self.max_shards < 1:
            raise ValueError(f"max_shards must be >= 1 (or None for all); got {self.max_shards}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError(f"num_actors must be >= 1; got {self.num_actors}")
        if self.read_nice is not None and not 0 <= self.read_nice <= 19:
            raise ValueError(
                f"read_nice must be a nice value from 0 to 19 (or None for automatic); got {self.read_nice}"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 (or None for the CPUs per actor); got {self.torch_threads}")

    def record(self) -> dict:
        data = dataclasses.asdict(self)
        data["storage_options"] = sorted(self.storage_options)  # option names only: values may be secrets
        return data


@dataclass
class BuildReport:
    images: int  # images in the corpus listing (after --limit)
    shards: int
    shards_skipped: list[int]  # already committed by an earlier run
    shards_written: list[int]
    shards_left: int  # still missing (a --max-shards run)
    images_embedded: int  # rows this run processed (good + bad)
    errors: int  # error rows this run wrote (shards + listing)
    seconds: float
    index_built: bool
    count: int | None  # vectors in the index, when finished
    # read/decode, embed, write: images and busy seconds this run (empty when nothing was embedded)
    stages: dict[str, StageFigure] = field(default_factory=dict)
    startup_seconds: float | None = None  # run start → first forward (workers up, encoder built, a block read)
    steady_rate: float | None = None  # images_embedded / seconds from the first forward to the end of the run
    index_seconds: float = 0.0  # the FAISS build (or its up-to-date check) at the end of the run, in the driver

    @property
    def rate(self) -> float:
        return self.images_embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        state = (
            f"index of {self.count} vectors {'written' if self.index_built else 'already up to date'}"
            + (f" ({self.index_seconds:.1f} s)" if self.index_built else "")
            if self.count is not None
            else f"{self.shards_left} shards left: rerun to continue"
        )
        return (
            f"{self.images} images in {self.shards} shards: {len(self.shards_skipped)} already done, "
            f"{len(self.shards_written)} written ({self.images_embedded} images, {self.errors} error rows) "
            f"in {self.seconds:.1f} s ({self.rate:.1f} img/s); {state}"
        )

    def stage_table(self) -> str:
        """Per-stage images, busy seconds and images/s; '' when this run embedded nothing."""
        if not self.stages:
            return ""
        table = stage_table(self.stages, self.seconds)
        if self.startup_seconds is None:  # every row failed before the forward
            return table
        return (
            table + f"\nstart-up {self.startup_seconds:.1f} s to the first forward, then {self.steady_rate:.1f} img/s"
        )


def embedder_spec(name: str) -> tuple[str, int, int]:
    """(canonical name, dim, image_size) of an encoder, built once on the driver to ask."""
    from adir_ops.embedding import get_embedder

    embedder = get_embedder(name)
    return embedder.name, int(embedder.dim), int(embedder.image_size)


def actor_resources(config: BuildConfig) -> dict[str, Any]:
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


def actor_threads(config: BuildConfig, resources: dict[str, Any]) -> int:
    """torch threads of one embed actor: on CPU, the cluster's CPUs shared among the actors.

    The forward is the job's bottleneck by far (efficientnet-lite0 on this 2-core box: ~75 ms
    per image per core against ~4 ms to fetch, decode and resize it), so the actors' threads
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


def read_nice(config: BuildConfig, resources: dict[str, Any]) -> int:
    """The read tasks' nice value: the config's, else READ_NICE when the embed actors are CPU actors."""
    if config.read_nice is not None:
        return config.read_nice
    return 0 if resources.get("num_gpus") else READ_NICE


def committed_records(config: BuildConfig, shards: list[Shard]) -> dict[int, dict | None]:
    """Each shard's commit record (None if missing or torn); footers are read concurrently."""
    urls = [embeddings_url(config.out, s.name) for s in shards]
    with ThreadPoolExecutor(max_workers=16) as pool:
        records = list(pool.map(lambda u: read_shard_footer(u, config.storage_options), urls))
    return {s.index: r for s, r in zip(shards, records)}


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
    config: BuildConfig, shards: list[Shard], embedder_name: str, dim: int, image_size: int
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


def run_build(config: BuildConfig) -> BuildReport:
    """Build (or resume building) the index at config.out; safe to rerun, and to kill and rerun."""
    started, started_wall = time.perf_counter(), time.time()
    embedder_name, dim, image_size = embedder_spec(config.embedder)
    check_factory(dim, config.index_factory)  # before any image is embedded, not after
    listing = list_source(
        config.source,
        ids_file=config.ids_file,
        url_template=config.url_template,
        storage_options=config.storage_options,
    ).limit(config.limit)
    if len(listing) == 0:
        raise ValueError(
            f"no images found in {config.source}; supported extensions: jpg, jpeg, png, webp, bmp, gif, tif, tiff"
        )
    shards = plan_shards(listing, config.shard_size)
    remove_stale_temporaries(config.out, (EMBEDDINGS_DIR, ERRORS_DIR))
    write_listing_errors(config.out, listing.rejected, config.storage_options)
    records = committed_records(config, shards)
    pending = [s for s in shards if not is_committed(records[s.index], s, embedder_name, dim)]
    pending_indices = {s.index for s in pending}
    skipped = [s.index for s in shards if s.index not in pending_indices]
    this_run = pending[: config.max_shards] if config.max_shards else pending
    written: list[int] = []
    errors = len(listing.rejected)
    stages: dict[str, StageFigure] = {}
    first_forward = None
    if this_run:
        writer, times = embed_shards(config, this_run, embedder_name, dim, image_size)
        stages, first_forward = times.stages, times.first_forward
        written, errors = sorted(writer.committed), errors + writer.errors
        records.update(committed_records(config, [s for s in shards if s.index in set(written)]))
    left = len(pending) - len(this_run)
    report = BuildReport(
        images=len(listing),
        shards=len(shards),
        shards_skipped=skipped,
        shards_written=written,
        shards_left=left,
        images_embedded=sum(len(s) for s in this_run),
        errors=errors,
        seconds=0.0,
        index_built=False,
        count=None,
        stages=stages,
    )
    if left == 0:
        unreadable = [s.name for s in shards if records[s.index] is None]
        if unreadable:
            raise RuntimeError(
                f"shards {unreadable[:3]} were written but their footers cannot be read back; rerun to resume"
            )
        entries = tuple(
            ShardEntry(s.name, records[s.index]["rows"], records[s.index]["errors"], s.fingerprint) for s in shards
        )
        index_started = time.perf_counter()
        report.count, report.index_built = write_index(
            config, entries, embedder_name, dim, errors=len(listing.rejected)
        )
        report.index_seconds = time.perf_counter() - index_started
    report.seconds = time.perf_counter() - started
    if first_forward is not None:
        report.startup_seconds = max(0.0, first_forward - started_wall)
        after = report.seconds - report.startup_seconds
        report.steady_rate = report.images_embedded / after if after > 0 else 0.0
    return report


def write_index(
    config: BuildConfig, entries: tuple[ShardEntry, ...], embedder_name: str, dim: int, errors: int
) -> tuple[int, bool]:
    """FAISS index + ids + manifest over all shards; skipped when the manifest already describes them."""
    from index_builder.faiss_index import AUTO_FACTORY, default_factory

    count = sum(e.rows for e in entries)
    factory, record = config.index_factory, config.record()
    if factory == AUTO_FACTORY:
        # The requested "auto" stays in the recorded config; the manifest's factory is what was built.
        factory = default_factory(count, dim)
        record["factory_choice"] = f"auto: count {count} -> {factory}"
    try:
        existing = Manifest.read(config.out, config.storage_options)
    except (FileNotFoundError, ValueError):
        existing = None  # missing, torn or tampered with: rebuilt below
    if (
        existing is not None
        and existing.shards == entries
        and existing.factory == factory
        and existing.embedder == embedder_name
        and existing.dim == dim
        and _index_intact(config, existing)
    ):
        return count, False
    # The manifest is the finished-index marker: drop it first so a reader never pairs an
    # old manifest with a half-rewritten index.
    remove_if_exists(join_url(config.out, MANIFEST_NAME), config.storage_options)
    if count == 0:
        raise ValueError(
            f"every image of {config.source} failed to read or decode; see the error rows under {config.out}/errors/"
        )
    built = build_faiss_index(
        config.out,
        entries,
        dim,
        factory,
        storage_options=config.storage_options,
        train_size=config.train_size,
        gpu=config.gpu_index,
    )
    Manifest(
        embedder=embedder_name,
        dim=dim,
        metric=METRIC,
        factory=factory,
        count=built,
        shards=entries,
        created=utc_now(),
        source=config.source,
        errors=errors + sum(e.errors for e in entries),
        config=record,
    ).write(config.out, config.storage_options)
    return built, True


def _index_intact(config: BuildConfig, manifest: Manifest) -> bool:
    """Whether the index files still match the manifest (a garbage index.faiss is rebuilt, not reported up to date)."""
    try:
        verify_index(config.out, manifest, config.storage_options, full=True)
    except (ValueError, FileNotFoundError) as exc:
        print(f"index at {config.out} does not match its manifest ({exc}); rebuilding it", file=sys.stderr)
        return False
    return True
