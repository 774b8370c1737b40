"""The index build job: list → shard → Ray Data (read/decode/resize → embed actors) → shard writer → FAISS."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from adir_ops.retrieval.embedding import DEFAULT_EMBEDDER
from adir_ops.validation import check_fields
from adir_storage import MAX_READ_BYTES, join_url, remove_if_exists, remove_stale_temporaries
from index_builder.embed_stage import (  # noqa: F401  (READ_NICE, actor_*, read_nice: the job's import surface)
    READ_NICE,
    actor_resources,
    actor_threads,
    embed_shards,
    read_nice,
)
from index_builder.faiss_index import DEFAULT_TRAIN_SIZE, METRIC, build_faiss_index, check_factory, verify_index
from index_builder.manifest import IDS_NAME, INDEX_NAME, MANIFEST_NAME, Manifest, ShardEntry, utc_now
from index_builder.reader import DEFAULT_MAX_IMAGE_PIXELS
from index_builder.sources import Shard, list_source, plan_shards
from index_builder.throughput import StageFigure, stage_table
from index_builder.writer import (
    EMBEDDINGS_DIR,
    ERRORS_DIR,
    embeddings_url,
    is_committed,
    read_shard_footer,
    write_listing_errors,
)


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
    max_input_bytes: int = MAX_READ_BYTES  # bytes read per image at most; a larger file is an error row
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
        for name in (
            "shard_size",
            "batch_size",
            "read_batch_size",
            "max_image_pixels",
            "max_input_bytes",
            "train_size",
        ):
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


JOB = "adir index build"
OUR_ENTRIES = frozenset({MANIFEST_NAME, INDEX_NAME, IDS_NAME, EMBEDDINGS_DIR, ERRORS_DIR})


def claim_index_folder(out: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Make OUT this job's folder or refuse it (adir_storage.claim_output_folder); True when it resumes one.

    A folder from before the folder marker is ours when it holds only what a build writes and its
    manifest.json parses as our Manifest: a user's own manifest.json is never written over. No
    file the build writes may be a link (index.faiss and ids.parquet are streamed, not renamed).
    """
    from adir_storage import claim_output_folder

    def legacy(entries: set[str]) -> bool:
        if not entries <= OUR_ENTRIES:
            return False
        if MANIFEST_NAME not in entries:
            return EMBEDDINGS_DIR in entries  # an older build stopped before its index
        try:
            Manifest.read(out, storage_options)
        except (ValueError, FileNotFoundError):
            return False
        return True

    return claim_output_folder(out, JOB, storage_options, legacy=legacy, links=sorted(OUR_ENTRIES), flag="OUT")


def embedder_spec(name: str) -> tuple[str, int, int]:
    """(canonical name, dim, image_size) of an encoder, built once on the driver to ask."""
    from adir_ops.retrieval.embedding import get_embedder

    embedder = get_embedder(name)
    return embedder.name, int(embedder.dim), int(embedder.image_size)


def committed_records(config: BuildConfig, shards: list[Shard]) -> dict[int, dict | None]:
    """Each shard's commit record (None if missing or torn); footers are read concurrently."""
    urls = [embeddings_url(config.out, s.name) for s in shards]
    with ThreadPoolExecutor(max_workers=16) as pool:
        records = list(pool.map(lambda u: read_shard_footer(u, config.storage_options), urls))
    return {s.index: r for s, r in zip(shards, records)}


def run_build(config: BuildConfig) -> BuildReport:
    """Build (or resume building) the index at config.out; safe to rerun, and to kill and rerun."""
    started, started_wall = time.perf_counter(), time.time()
    embedder_name, dim, image_size = embedder_spec(config.embedder)
    check_factory(dim, config.index_factory)  # before any image is embedded, not after
    claim_index_folder(config.out, config.storage_options)  # before anything is written
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
        and existing.ids_sha256  # an index from before the ids checksum is rebuilt once to record it
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
    built, ids_sha256 = build_faiss_index(
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
        ids_sha256=ids_sha256,
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
