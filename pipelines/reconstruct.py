"""`adir reconstruct`: resolve the job config, check it before any work, run the actor pool, merge the results."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

from adir_ops.priors.registry import PRIORS, format_prior, parse_prior
from adir_storage import (
    is_local,
    join_url,
    redact_text,
    redact_url,
    remove_stale_temporaries,
    scrub,
)
from cluster.config import ReconstructConfig
from cluster.lease import Lease
from cluster.results import (
    ADAPTERS_DIR,
    IMAGES_DIR,
    RESULTS_DIR,
    RESULTS_NAME,
    error_row,
    merge_results,
    write_part,
)
from cluster.run_folder import (  # noqa: F401  (check_* are this module's names too: tests and callers use them)
    check_items_outside_out,
    check_out_apart,
    check_previous_run,
    finished_work,
    write_config,
)
from pipelines.errors import JobFailed, UsageError
from pipelines.progress import JobProgress
from pipelines.reconstruct_checks import check_index_file, check_prior, check_sampler, check_tiling

# CLI flag → config field; every flag defaults to None so that --config values are not overridden by defaults.
CLI_FIELDS = (
    "index",
    "inputs",
    "task",
    "out",
    "prior",
    "k",
    "mode",
    "steps",
    "lora_steps",
    "lora_learning_rate",
    "seed",
    "degraded",
    "degradation",
    "reference",
    "guidance_scale",
    "sampler",
    "samples",
    "adapter_cache",
    "warm_start",
    "warm_start_steps",
    "order",
    "embedder",
    "tile_batch",
    "precision",
    "tile_overlap",
    "sampling_region",
    "retrieval_region",
    "num_actors",
    "cpus_per_actor",
    "gpus_per_actor",
    "limit",
    "max_input_bytes",
    "max_pixels",
)


def _read_yaml(url: str) -> dict[str, Any]:
    from adir_storage.yaml_safe import read_yaml

    try:  # bounded: a YAML bomb, a FIFO or a huge file is refused in one line, never walked
        values = read_yaml(url, what="job config") or {}
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; check --config") from None
    if not isinstance(values, dict):
        raise ValueError(f"job config {url} must be a YAML mapping of options; got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def resolve_config(
    args: argparse.Namespace, default_index: Callable[[str | None], str] | None = None
) -> ReconstructConfig:
    """Dataclass defaults < --config job.yaml < command-line flags; the config is validated here, once.

    default_index(embedder): the index to retrieve from when a retrieving mode names none, only named here
    (the CLI's: the embedded corpus's, pipelines.default_index; main builds it once the config is valid).
    """
    values = _read_yaml(args.config) if getattr(args, "config", None) else {}
    for name in CLI_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    # Local paths become absolute: actors may run elsewhere, and config.yaml must say where things were.
    for name in ("inputs", "out", "index", "reference"):
        if isinstance(values.get(name), str) and values[name] and is_local(values[name]):
            values[name] = os.path.abspath(os.path.expanduser(values[name].removeprefix("file://")))
    prior = values.get("prior")
    if isinstance(prior, str) and prior:
        try:
            kind, target = parse_prior(prior)
        except ValueError:
            kind, target = None, ""  # the config refuses it, in the order of its checks
        if kind is not None and PRIORS[kind].takes_path and is_local(target) and os.path.exists(target):
            values["prior"] = format_prior(kind, os.path.abspath(target))
    if default_index is not None and values.get("mode", "adir") != "baseline" and not values.get("index"):
        values["index"] = default_index(values.get("embedder"))
    return ReconstructConfig.from_dict(values)


# ---------------------------------------------------------------- job-level checks
def preflight(config: ReconstructConfig) -> tuple[ReconstructConfig, list[dict[str, Any]]]:
    """Every job-level problem, raised before any actor starts; returns the resolved config and the items."""
    from pipelines.inputs import list_inputs

    check_out_apart(config)
    check_prior(config.prior, config.storage_options)
    check_sampler(config)
    check_tiling(config)
    if config.mode != "baseline":
        from index_builder.index_query import check_embedder
        from index_builder.manifest import Manifest

        manifest = Manifest.read(config.index, config.storage_options)
        if config.embedder is not None:
            check_embedder(manifest, config.index, config.embedder)
        check_index_file(config.index, manifest, config.storage_options)  # whole: else each actor fails on it
        if config.k > manifest.count:
            raise ValueError(
                f"--k {config.k} but the index at {config.index} holds {manifest.count} images; ask for at most {manifest.count}"
            )
        config = config.with_embedder(manifest.embedder)
    items = list_inputs(
        config.inputs,
        task=config.task,
        degraded=config.degraded,
        reference=config.reference,
        limit=config.limit,
        storage_options=config.storage_options,
        max_bytes=config.max_input_bytes,
    )
    check_items_outside_out(config, items)
    check_previous_run(config)  # OUT is ours, links refused, same results-deciding options and index
    return config, items


# ---------------------------------------------------------------------- the job
def run(
    config: ReconstructConfig,
    *,
    progress: bool = True,
    on_row: Callable[[dict[str, Any], Any], None] | None = None,
    start_ray: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Reconstruct every input not yet done; returns a summary (the merged table under "results").

    `on_row(row, pool)` is called after each finished image (progress hooks, fault-injection tests).
    Ray must be initialised, or `start_ray` given: main() starts it only once the checks pass, so
    a usage error costs no cluster start-up. The pool is torn down on any exit, including Ctrl-C.
    Job-level problems found before any work raise UsageError; a live job on the same OUT, LeaseHeld.
    """
    start = time.perf_counter()
    try:
        config, items = preflight(config)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise UsageError(scrub(str(exc), config.storage_options)) from exc
    if start_ray is not None:
        start_ray()
    with Lease(config.out, config.storage_options):
        return _run_leased(config, items, start, progress, on_row)


def _in_embedding_order(config: ReconstructConfig, items: list[dict[str, Any]], actors: int) -> list[dict[str, Any]]:
    """The items sorted by their embedding, one run per actor (cluster.ordering), with the index's encoder."""
    from adir_ops.retrieval.embedding import DEFAULT_EMBEDDER
    from cluster.ordering import order_items

    name = config.embedder
    if name is None and config.index:
        from index_builder.manifest import Manifest

        name = Manifest.read(config.index, config.storage_options).embedder
    return order_items(items, name or DEFAULT_EMBEDDER, actors, config.storage_options, seed=config.seed)


def _warn(notes: list[str], config: ReconstructConfig) -> None:
    for note in notes:
        print(f"warning: {scrub(note, config.storage_options)}", file=sys.stderr)


def _run_leased(
    config: ReconstructConfig, items: list[dict[str, Any]], start: float, progress: bool, on_row
) -> dict[str, Any]:
    from cluster.pool import WorkerPool
    from cluster.retrieval import build_corpus_thumbnails

    write_config(config)
    notes: list[str] = []  # what the run found wrong in OUT (changed inputs, cut PNGs, corrupt parts) and did
    done = finished_work(config, items, notes)
    _warn(notes, config)
    todo = [item for item in items if item["name"] not in done]
    unlistable = [item for item in todo if "error" in item]
    for item in unlistable:  # files that cannot be inputs at all: their rows, written here
        write_part(config.out, error_row(config, item), config.storage_options)
    skipped = len(items) - len(todo)
    todo = [item for item in todo if "error" not in item]
    if todo and config.mode == "mse-nn":
        build_corpus_thumbnails(config.out, config.index, config.mse_thumbnail, config.storage_options)
    bar = JobProgress(len(items), skipped + len(unlistable), progress)
    rows: list[dict[str, Any]] = []
    pool = None
    try:
        if todo:
            pool = WorkerPool(config, work=len(todo))
            if config.order == "embedding":
                todo = _in_embedding_order(config, todo, pool.count)
            if progress:
                print(
                    f"{len(pool.ready)} of {pool.count} actor(s) ready ({pool.options}); {len(todo)} image(s) to do",
                    file=sys.stderr,
                )

            def finished(row: dict[str, Any]) -> None:
                bar(row)
                if on_row is not None:
                    on_row(row, pool)

            bar.start()  # the rate and ETA count work, not the actors' start-up
            rows = pool.run(todo, finished)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    # An actor killed mid-commit leaves a temp file beside its PNG or row; the image itself was
    # retried, so the leftover is garbage. Safe now: every actor of this run has stopped.
    remove_stale_temporaries(
        config.out, (IMAGES_DIR, f"{IMAGES_DIR}/mean", f"{IMAGES_DIR}/std", RESULTS_DIR, ADAPTERS_DIR)
    )
    notes.clear()
    table = merge_results(config.out, config.storage_options, notes)  # every part in OUT: no row is ever dropped
    _warn(notes, config)
    elapsed = time.perf_counter() - start
    errors = table.num_rows - table.column("error").null_count
    return {
        "total": len(items),
        "skipped": skipped,
        "processed": len(rows) + len(unlistable),
        "errors": errors,
        "elapsed_s": elapsed,
        "results": table,
        "config": config,
    }


def main(args: argparse.Namespace) -> int:
    import ray

    from cluster.watchdog import init_ray

    def start_ray() -> None:
        if not ray.is_initialized():  # a local cluster it starts ends with it, even on kill -9 (cluster.watchdog)
            init_ray(address=args.ray_address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)

    def default_index(embedder: str | None) -> str:
        from pipelines.default_index import default_index_path

        return str(default_index_path(embedder))

    try:
        config = resolve_config(args, default_index)
        if config.mode != "baseline" and config.index == default_index(config.embedder):
            from pipelines.default_index import ensure_default_index

            # Built (or found) only now that every other option is known good: a typo costs no corpus build.
            ensure_default_index(embedder=config.embedder, progress=not args.no_progress, start_ray=start_ray)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise UsageError(redact_text(str(exc))) from exc
    if config.tiny_resolution is not None:
        print(
            f"prior {config.prior!r}: a tiny RANDOM-WEIGHT prior; this run shows the mechanics, not image quality",
            file=sys.stderr,
        )

    try:
        summary = run(config, progress=not args.no_progress, start_ray=start_ray)
    except UsageError:
        raise
    except Exception as exc:  # a backend's message may quote a credential: scrub before anyone prints it
        raise JobFailed(scrub(f"{type(exc).__name__}: {exc}", config.storage_options)) from exc
    table = summary["results"]
    print(
        f"{summary['total']} images: {summary['skipped']} already done, {summary['processed']} processed, "
        f"{summary['errors']} error row(s), {summary['elapsed_s']:.1f} s. "
        f"Results: {redact_url(join_url(config.out, RESULTS_NAME))} ({table.num_rows} rows), "
        f"images under {redact_url(join_url(config.out, 'images'))}"
    )
    for row in table.filter(table.column("error").is_valid()).to_pylist()[:10]:
        line = f"  error {row['image_id']} [{row['stage']}]: {(row['error'].splitlines() or [''])[0]}"
        print(redact_text(line), file=sys.stderr)
    # Error rows are results (bad inputs); the job itself succeeded, and a rerun retries them.
    return 0
