"""`adir evaluate`: per task and arm, every metric's mean ± std over images and paired differences with t-intervals, as Markdown, CSV and HTML.

An ARM is one (task, mode, settings) combination: `adir reconstruct` runs that agree on task,
mode and every option that decides that mode's results are one arm (a dataset split over
several OUT folders is merged); runs that differ in such an option (say `lora_steps`) are
separate arms, labelled by what differs ("adir lora_steps=100"). Each task also gets the
PLAIN arm: the operator's plain restoration (bicubic upscale, the blurred input, the gray
image, the mean-filled hole) of the same degraded inputs.

Comparisons are PAIRED over the images both arms reconstructed without error: every
non-baseline arm against the no-adaptation arm (`--baseline-mode`) with the same settings,
and ADIR against random-NN and MSE-NN (the paper's Table 5). The interval is Student's t on
the per-image differences. A metric missing for some images is never averaged as NaN: every
cell carries its n, and results.md says why the rest are missing.

PSNR and SSIM are the job's own columns (computed on the float output before it was written
as PNG). The other metrics (`--metrics`, default `report`: NIQE, BRISQUE, PIQE and ST-LPIPS,
quality.DEFAULT_REPORT_METRICS, all offline; `offline` = every metric that runs offline) are
computed here from the written PNGs against the ground truth, which, like the plain
restoration and the degraded input the report shows, is rebuilt from the input exactly as the
job's worker did (same operator, same per-image seed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import posixpath
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from adir_storage import commit_bytes, is_local, is_within, join_url, location, open_fs
from cluster.config import MODES, TASKS
from cluster.results import CONFIG_NAME, IMAGES_DIR, RESULTS_NAME

PLAIN = "plain"
STORED_METRICS = ("psnr", "ssim")  # columns of results.parquet
OFFLINE = "offline"  # every metric that runs with no download
REPORT = "report"  # the perceptual and distortion metrics a report leads with
# Options that never change an image's result, or that are the arm's own coordinates.
NOT_SETTINGS = frozenset({
    "task", "mode", "out", "inputs", "reference", "limit", "storage_options", "num_actors", "cpus_per_actor",
    "gpus_per_actor", "max_restarts", "max_attempts", "tile_batch", "metrics",
})  # fmt: skip
# Options a mode does not use: two baseline runs that differ only in lora_steps are the same arm.
_LORA = ("index", "k", "lora_steps", "lora_rank", "lora_alpha", "lora_learning_rate", "lora_batch_size")
UNUSED_BY_MODE = {
    "baseline": frozenset({*_LORA, "embedder", "mse_thumbnail"}),
    "adir": frozenset({"mse_thumbnail"}),
    "random-nn": frozenset({"embedder", "mse_thumbnail"}),
    "mse-nn": frozenset({"embedder"}),
}
# The plain restoration depends on the degradation alone.
PLAIN_SETTINGS = ("seed", "noise_sigma_255", "degraded")
MODE_ORDER = (PLAIN, "baseline", "adir", "random-nn", "mse-nn")
MODE_TITLES = {
    PLAIN: "plain restoration", "baseline": "no adaptation", "adir": "ADIR (encoder K-NN)",
    "random-nn": "random-NN", "mse-nn": "MSE-NN (pixel K-NN)",
}  # fmt: skip
# ADIR is also compared with the other two neighbour choices (paper Table 5).
ADIR_REFERENCES = ("random-nn", "mse-nn")


@dataclass(frozen=True)
class EvaluateConfig:
    """What `adir evaluate` reads, what it computes and where it writes."""

    runs: tuple[str, ...]
    out: str = "evaluation"
    baseline_mode: str = "baseline"
    # Metrics beyond the stored PSNR/SSIM, computed from the PNGs; "report" = quality.DEFAULT_REPORT_METRICS,
    # "offline" = quality.OFFLINE_METRICS.
    metrics: tuple[str, ...] = (REPORT,)
    confidence: float = 0.95
    report: bool = True
    report_images: int | None = None  # per task; None = all
    report_neighbours: int = 8  # thumbnails per arm and image
    # torch intra-op threads for the metrics (None: torch's default). On a shared machine 1 is
    # often far faster: measured here under load, all offline metrics on 10 images took 99 s
    # with 2 threads and 8 s with 1.
    threads: int | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.runs:
            raise ValueError("evaluate needs at least one RUN_DIR (an `adir reconstruct --out` folder)")
        if self.baseline_mode not in MODES:
            raise ValueError(f"--baseline-mode {self.baseline_mode!r} is not a mode; choose one of {', '.join(MODES)}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"--confidence must be in (0, 1), e.g. 0.95; got {self.confidence}")
        if self.report_images is not None and self.report_images < 0:
            raise ValueError(f"--report-images must be >= 0; got {self.report_images}")
        if self.report_neighbours < 0:
            raise ValueError(f"--report-neighbours must be >= 0; got {self.report_neighbours}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {self.threads}")

    def metric_names(self) -> tuple[str, ...]:
        """Stored metrics first, then the requested ones ("offline" expanded), each once."""
        names: list[str] = list(STORED_METRICS)
        for name in self.metrics:
            if name in (OFFLINE, REPORT):
                from adir_ops.quality import DEFAULT_REPORT_METRICS, OFFLINE_METRICS

                names.extend(OFFLINE_METRICS if name == OFFLINE else DEFAULT_REPORT_METRICS)
            else:
                names.append(name)
        return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------- runs and arms
@dataclass
class Run:
    url: str
    config: dict[str, Any]  # OUT/config.yaml ({} when absent)
    rows: list[dict[str, Any]]
    reference_uris: dict[str, str | None] | None = None  # degraded runs: image_id -> ground truth, listed once


@dataclass
class Arm:
    """One (task, mode, settings): its rows by image id, and each image's metric values."""

    task: str
    mode: str
    settings: dict[str, Any]
    label: str = ""
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # image_id -> result row
    runs: dict[str, Run] = field(default_factory=dict)  # image_id -> the run it came from
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # image_id -> metric -> value
    missing: dict[str, dict[str, int]] = field(default_factory=dict)  # metric -> reason -> images

    @property
    def good(self) -> list[str]:
        """Ids of the images reconstructed without error, sorted."""
        return sorted(i for i, row in self.rows.items() if row.get("error") is None)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [self.rows[i] for i in sorted(self.rows) if self.rows[i].get("error") is not None]

    def set_missing(self, metric: str, reason: str, count: int = 1) -> None:
        reasons = self.missing.setdefault(metric, {})
        reasons[reason] = reasons.get(reason, 0) + count


def read_run(url: str, storage_options: Mapping[str, Any] | None = None) -> Run:
    import pyarrow.parquet as pq

    fs, path = open_fs(join_url(url, RESULTS_NAME), storage_options)
    fs.invalidate_cache()
    if not fs.exists(path):
        raise FileNotFoundError(f"{url} has no {RESULTS_NAME}; pass folders written by `adir reconstruct --out`")
    with fs.open(path, "rb") as f:
        rows = pq.read_table(f).to_pylist()
    fs, path = open_fs(join_url(url, CONFIG_NAME), storage_options)
    config: dict[str, Any] = {}
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            config = yaml.safe_load(f.read().decode("utf-8")) or {}
    if is_local(url):
        url = url.removeprefix("file://")
    return Run(url=url, config=config, rows=rows)


def _settings(mode: str, config: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """The options that decide this mode's results; without config.yaml, what the row itself records."""
    source = dict(config) if config else {"seed": row.get("seed"), "k": row.get("k")}
    unused = NOT_SETTINGS | UNUSED_BY_MODE.get(mode, frozenset())
    return {k: v for k, v in sorted(source.items()) if k not in unused}


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _add_row(arm: Arm, run: Run, row: dict[str, Any]) -> None:
    image_id = row["image_id"]
    if image_id in arm.rows:
        other = arm.runs[image_id].url
        where = f"both {other} and {run.url}" if other != run.url else f"{run.url} twice"
        raise ValueError(
            f"image {image_id!r} of task {arm.task}, mode {arm.mode} is in {where} with the same settings; "
            "pass each result once (or rerun one of them with another --seed to make it a separate arm)"
        )
    arm.rows[image_id] = row
    arm.runs[image_id] = run


def group_arms(runs: Sequence[Run]) -> list[Arm]:
    """Arms of every (task, mode, settings) in the runs, plus each task's plain arm; labelled and ordered."""
    arms: dict[tuple, Arm] = {}
    plains: dict[tuple, Arm] = {}
    for run in runs:
        for row in run.rows:
            task, mode = row["task"], row["mode"]
            settings = _settings(mode, run.config, row)
            key = (task, mode, _freeze(settings))
            arm = arms.setdefault(key, Arm(task, mode, settings))
            _add_row(arm, run, row)
            if row.get("error") is not None:
                continue
            plain_settings = {k: (run.config or row).get(k) for k in PLAIN_SETTINGS}
            plain = plains.setdefault((task, _freeze(plain_settings)), Arm(task, PLAIN, plain_settings))
            # The plain restoration is the same in every arm of a degradation: keep the first.
            if row["image_id"] not in plain.rows:
                _add_row(plain, run, row)
    everything = list(plains.values()) + list(arms.values())
    _label(everything)
    tasks = {t: i for i, t in enumerate(TASKS)}
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    return sorted(everything, key=lambda a: (tasks.get(a.task, len(tasks)), a.task, order.get(a.mode, len(order)), a.label))


def _label(arms: Sequence[Arm]) -> None:
    """Mode name, plus the settings in which arms of one (task, mode) differ."""
    groups: dict[tuple[str, str], list[Arm]] = {}
    for arm in arms:
        groups.setdefault((arm.task, arm.mode), []).append(arm)
    for group in groups.values():
        keys = sorted({k for arm in group for k in arm.settings})
        differ = [k for k in keys if len({_freeze(arm.settings.get(k)) for arm in group}) > 1]
        for arm in group:
            arm.label = " ".join([arm.mode] + [f"{k}={arm.settings.get(k)}" for k in differ])


def _matches(a: Arm, b: Arm) -> bool:
    """Same task, and the same value for every setting both arms have."""
    return a.task == b.task and all(_freeze(a.settings[k]) == _freeze(b.settings[k]) for k in set(a.settings) & set(b.settings))


@dataclass(frozen=True)
class Comparison:
    arm: Arm
    reference: Arm

    @property
    def title(self) -> str:
        return f"{self.arm.label} − {self.reference.label}"


def comparisons(arms: Sequence[Arm], baseline_mode: str = "baseline") -> tuple[list[Comparison], list[str]]:
    """(pairs to compare, notes on pairs that could not be formed), ordered as the arms are."""
    pairs: list[Comparison] = []
    notes: list[str] = []
    for arm in arms:
        if arm.mode == PLAIN:
            continue
        references = [] if arm.mode == baseline_mode else [baseline_mode]
        if arm.mode == "adir":
            references += [m for m in ADIR_REFERENCES if m != baseline_mode]
        for mode in references:
            candidates = [r for r in arms if r.mode == mode and _matches(arm, r)]
            if len(candidates) == 1:
                pairs.append(Comparison(arm, candidates[0]))
            elif len(candidates) > 1:
                raise ValueError(
                    f"{arm.task}: arm '{arm.label}' matches several {mode} arms ({', '.join(c.label for c in candidates)}); "
                    "evaluate fewer runs at once so that each arm has one reference"
                )
            elif any(r.mode == mode and r.task == arm.task for r in arms):
                notes.append(f"{arm.task}: no {mode} arm has the settings of '{arm.label}'; that comparison is left out")
    return pairs, notes


# ---------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Summary:
    n: int  # images with a value
    images: int  # images reconstructed without error
    mean: float | None
    std: float | None  # sample std (ddof 1); None below 2 values


def summarize(arm: Arm, metric: str) -> Summary:
    import numpy as np

    good = arm.good
    values = np.array([arm.values[i][metric] for i in good if metric in arm.values.get(i, {})], dtype=np.float64)
    n = len(values)
    return Summary(
        n=n, images=len(good), mean=float(values.mean()) if n else None, std=float(values.std(ddof=1)) if n > 1 else None
    )


@dataclass(frozen=True)
class Paired:
    n: int  # images both arms have a value for
    mean: float | None  # mean of (arm − reference)
    std: float | None
    low: float | None  # t-interval at `confidence`; None below 2 pairs
    high: float | None
    p_value: float | None  # two-sided paired t-test
    confidence: float


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], confidence: float = 0.95) -> Paired:
    """Mean of a[i] − b[i] over the ids in both, with Student's t interval and the paired t-test's p-value."""
    import numpy as np
    from scipy import stats

    ids = sorted(set(a) & set(b))
    d = np.array([a[i] - b[i] for i in ids], dtype=np.float64)
    n = len(d)
    if n == 0:
        return Paired(0, None, None, None, None, None, confidence)
    mean = float(d.mean())
    if n == 1:
        return Paired(1, mean, None, None, None, None, confidence)
    std = float(d.std(ddof=1))
    if std == 0:
        # Identical differences: the interval collapses and the t statistic is undefined.
        return Paired(n, mean, 0.0, mean, mean, 1.0 if mean == 0 else 0.0, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    return Paired(n, mean, std, mean - half, mean + half, p, confidence)


def metric_column(arm: Arm, metric: str) -> dict[str, float]:
    """image_id -> value over the arm's good images that have the metric."""
    return {i: arm.values[i][metric] for i in arm.good if metric in arm.values.get(i, {})}


# ---------------------------------------------------------------------- what the job saw
@dataclass
class Views:
    """One image as the job saw it: the degraded input, its plain restoration and the ground truth; (C, H, W) in [0, 1]."""

    input01: Any
    plain01: Any
    truth01: Any | None


def _reference_uris(run: Run, storage_options) -> dict[str, str | None]:
    if run.reference_uris is None:
        from pipelines.inputs import list_inputs

        items = list_inputs(run.config["inputs"], task=run.config["task"], degraded=True, reference=run.config["reference"],
                            storage_options=storage_options)  # fmt: skip
        run.reference_uris = {it["image_id"]: it.get("reference_uri") for it in items}
    return run.reference_uris


def reproduce_views(row: Mapping[str, Any], run: Run, storage_options: Mapping[str, Any] | None = None) -> Views:
    """Rebuild the degraded input, its plain restoration and the ground truth exactly as cluster.worker did.

    Same operator options and the same per-image degradation generator, so the noise is the
    job's own (tests check that the plain restoration's PSNR equals the job's naive_psnr).
    """
    from adir_ops.operators import make_operator
    from adir_ops.rng import generator_for
    from adir_storage import read_bytes
    from cluster.images import decode_rgb, to_tensor01

    config = run.config
    task, image_id = row["task"], row["image_id"]
    options = {} if config.get("noise_sigma_255") is None else {"noise_sigma_255": config["noise_sigma_255"]}
    pixels = to_tensor01(decode_rgb(read_bytes(input_uri(row, run), storage_options))).unsqueeze(0)
    if not config.get("degraded"):
        operator = make_operator(task, image_size=tuple(pixels.shape[-2:]), **options)
        y = operator.degrade(pixels * 2 - 1, generator_for(row["seed"], f"{image_id}#degrade"))
        truth = pixels
    else:
        truth = None
        if config.get("reference"):
            uri = _reference_uris(run, storage_options).get(image_id)
            if uri:
                truth = to_tensor01(decode_rgb(read_bytes(uri, storage_options))).unsqueeze(0)
        factor = {"sr4": 4, "sr8": 8}.get(task, 1)
        size = tuple(truth.shape[-2:]) if truth is not None else (pixels.shape[-2] * factor, pixels.shape[-1] * factor)
        operator = make_operator(task, image_size=size, **options)
        y = pixels * 2 - 1
        if task == "colorize":
            y = y.mean(dim=1, keepdim=True)
    plain = operator.naive_inverse(y).add(1).div(2).clamp(0, 1)
    input01 = y.add(1).div(2).clamp(0, 1)
    return Views(input01[0], plain[0], None if truth is None else truth[0])


def output_url(row: Mapping[str, Any], run: Run) -> str:
    """Where a row's PNG is, refusing any `output` that leaves the run's images/ folder.

    A run folder is untrusted input: its results.parquet could name `../../etc/passwd` and
    have that file read into the report. The job only ever writes `images/<safe name>.png`.
    """
    output = row.get("output")
    if not isinstance(output, str) or not output:
        raise ValueError(f"row {row.get('image_id')!r} of {run.url} names no output PNG")
    clean = posixpath.normpath(output)
    if "://" in output or "\\" in output or clean != output or not clean.startswith(IMAGES_DIR + "/") or clean.count("/") != 1:
        raise ValueError(f"row {row.get('image_id')!r} of {run.url} names output {output!r}, outside its {IMAGES_DIR}/ folder; refused")
    url = join_url(run.url, clean)
    if is_local(url) and not is_within(location(url), location(join_url(run.url, IMAGES_DIR))):
        raise ValueError(f"row {row.get('image_id')!r} of {run.url}: {output!r} is a link out of the run folder; refused")
    return url


def input_uri(row: Mapping[str, Any], run: Run, key: str = "uri", folder: str = "inputs") -> str:
    """A row's input URI, refused unless it lies in the folder the run's config.yaml says the job read."""
    uri = row.get(key)
    root = run.config.get(folder) if isinstance(run.config, Mapping) else None
    if not isinstance(uri, str) or not isinstance(root, str) or not root:
        raise ValueError(f"{run.url} has no config.yaml naming its --{folder}: its input {uri!r} is not trusted")
    if not is_within(location(uri), location(root)):
        raise ValueError(f"row {row.get('image_id')!r} of {run.url} names input {uri!r}, outside the run's --{folder} {root}; refused")
    return uri


def read_output(row: Mapping[str, Any], run: Run, storage_options: Mapping[str, Any] | None = None):
    """The reconstruction PNG of a row as (3, H, W) in [0, 1]."""
    from adir_storage import read_bytes
    from cluster.images import decode_rgb, to_tensor01

    return to_tensor01(decode_rgb(read_bytes(output_url(row, run), storage_options)))


class ViewCache:
    """Views per (task, settings of the degradation, image id): each input is read and degraded once."""

    def __init__(self, storage_options: Mapping[str, Any] | None = None):
        self.storage_options = storage_options
        self.views: dict[tuple, Views | Exception] = {}

    def get(self, row: Mapping[str, Any], run: Run) -> Views:
        key = (row["task"], row["image_id"], row["uri"], _freeze({k: run.config.get(k) for k in PLAIN_SETTINGS}), row["seed"])
        if key not in self.views:
            try:
                self.views[key] = reproduce_views(row, run, self.storage_options)
            except Exception as exc:  # an input gone since the job ran: its metrics go missing, with this reason
                self.views[key] = exc
        found = self.views[key]
        if isinstance(found, Exception):
            raise found
        return found


# ---------------------------------------------------------------------- metrics
def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= 200 else text[:197] + "..."


def fill_metrics(arms: Sequence[Arm], names: Sequence[str], views: ViewCache, progress: bool = False) -> dict[str, str]:
    """Fill each arm's per-image values; returns {metric: reason} for metrics that cannot run at all here.

    Stored metrics come from the rows (the plain arm's PSNR from naive_psnr); the others are
    computed on the PNG (the plain arm: on the float restoration) against the ground truth,
    batched by image size. A metric that fails on a batch is retried image by image, so one
    degenerate image costs only its own value, with its reason recorded.
    """
    from adir_ops.quality import available_metrics

    computed = [n for n in names if n not in STORED_METRICS]
    unavailable = {n: r for n, r in available_metrics(computed).items() if r is not None} if computed else {}
    computed = [n for n in computed if n not in unavailable]
    # The plain arm has no SSIM column: it gets SSIM like the computed metrics.
    plain_computed = [n for n in names if n != "psnr" and n not in unavailable]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(a.good) for a in arms), unit="img", desc="metrics", file=sys.stderr)
    for arm in arms:
        wanted = plain_computed if arm.mode == PLAIN else computed
        batches: dict[tuple, list[tuple[str, Any, Any]]] = {}
        for image_id in arm.good:
            row, run = arm.rows[image_id], arm.runs[image_id]
            values = arm.values.setdefault(image_id, {})
            stored = {"psnr": row.get("naive_psnr")} if arm.mode == PLAIN else {n: row.get(n) for n in STORED_METRICS}
            for name in (n for n in names if n in stored):
                value = stored[name]
                if value is None or not math.isfinite(value):
                    arm.set_missing(name, "no value in results.parquet (no ground truth, or not computed by the job)")
                else:
                    values[name] = float(value)
            if not wanted:
                continue
            try:
                view = views.get(row, run)
                image = view.plain01 if arm.mode == PLAIN else read_output(row, run, views.storage_options)
            except Exception as exc:
                for name in wanted:
                    arm.set_missing(name, f"could not rebuild the image: {_first_line(exc)}")
                continue
            batches.setdefault(tuple(image.shape), []).append((image_id, image, view.truth01))
        for items in batches.values():
            for name in wanted:
                _compute(arm, name, items)
        if bar is not None:
            bar.update(len(arm.good))
    if bar is not None:
        bar.close()
    return unavailable


def _compute(arm: Arm, name: str, items: list[tuple[str, Any, Any]]) -> None:
    """One metric over same-size images (id, image, truth); values into arm.values, failures into arm.missing."""
    import torch

    from adir_ops.quality import compute_metrics, is_full_reference

    full_reference = is_full_reference(name)
    if full_reference:
        for _ in (it for it in items if it[2] is None):
            arm.set_missing(name, "no ground truth for this image")
        items = [it for it in items if it[2] is not None]
    if not items:
        return
    x = torch.stack([it[1] for it in items])
    ref = torch.stack([it[2] for it in items]) if full_reference else None
    try:
        for (image_id, *_), value in zip(items, compute_metrics(x, ref, names=[name])[name]):
            arm.values[image_id][name] = float(value)
        return
    except ValueError:
        pass
    for i, (image_id, *_) in enumerate(items):
        try:
            one = compute_metrics(x[i : i + 1], None if ref is None else ref[i : i + 1], names=[name])[name]
            arm.values[image_id][name] = float(one[0])
        except ValueError as exc:
            arm.set_missing(name, _first_line(exc))


# ---------------------------------------------------------------------- the evaluation
@dataclass
class Evaluation:
    config: EvaluateConfig
    runs: list[Run]
    arms: list[Arm]
    metrics: tuple[str, ...]  # those with at least one value
    unavailable: dict[str, str]  # metric -> why it could not run here
    comparisons: list[Comparison]
    notes: list[str]
    views: ViewCache  # the rebuilt inputs, reused by the report

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(a.task for a in self.arms))

    def arms_of(self, task: str) -> list[Arm]:
        return [a for a in self.arms if a.task == task]

    def comparisons_of(self, task: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.arm.task == task]

    def paired(self, comparison: Comparison, metric: str) -> Paired:
        return paired_difference(metric_column(comparison.arm, metric), metric_column(comparison.reference, metric), self.config.confidence)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's intra-op thread count set for the block and restored after it (the caller's setting is not ours to keep)."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def evaluate(config: EvaluateConfig, *, progress: bool = False) -> Evaluation:
    """Read the runs, group them into arms, fill every metric and pair the arms; writes nothing."""
    runs = [read_run(url, config.storage_options) for url in config.runs]
    empty = [r.url for r in runs if not r.rows]
    if len(empty) == len(runs):
        raise ValueError(f"{', '.join(empty)}: results.parquet has no rows; nothing to evaluate")
    arms = group_arms(runs)
    names = config.metric_names()
    views = ViewCache(config.storage_options)
    with _torch_threads(config.threads):
        unavailable = fill_metrics(arms, names, views, progress=progress)
    pairs, notes = comparisons(arms, config.baseline_mode)
    present = tuple(n for n in names if any(n in v for a in arms for v in a.values.values()))
    for n in names:
        if n not in present and n not in unavailable:
            reasons = {r for a in arms for r in a.missing.get(n, {})}
            notes.append(f"{n}: no value for any image ({'; '.join(sorted(reasons)) or 'no images'})")
    for url in empty:
        notes.append(f"{url}: results.parquet has no rows")
    return Evaluation(config, runs, arms, present, unavailable, pairs, notes, views)


# ---------------------------------------------------------------------- formatting
def higher_is_better(metric: str) -> bool:
    from adir_ops.quality import lower_is_better

    return not lower_is_better(metric)


# Decimals in the tables (the CSVs keep full precision): dB metrics to 0.01 dB, others to 1e-4.
DB_METRICS = ("psnr", "psnry")


def fmt(value: float | None, metric: str, *, difference: bool = False) -> str:
    if value is None:
        return "–"
    decimals = (3 if difference else 2) if metric in DB_METRICS else 4
    return f"{value:+.{decimals}f}" if difference else f"{value:.{decimals}f}"


def summary_cell(s: Summary, metric: str) -> str:
    """'mean ± std (n)'; n says how many of the arm's good images have a value."""
    if s.n == 0:
        return f"no value (0 of {s.images})"
    spread = f" ± {fmt(s.std, metric)}" if s.std is not None else ""
    count = f"n={s.n}" if s.n == s.images else f"n={s.n} of {s.images}"
    return f"{fmt(s.mean, metric)}{spread} ({count})"


def paired_cell(p: Paired, metric: str) -> str:
    if p.n == 0:
        return "no common images"
    mean = fmt(p.mean, metric, difference=True)
    if p.low is None:
        return f"{mean} (n={p.n}: no interval)"
    return f"{mean} [{fmt(p.low, metric, difference=True)}, {fmt(p.high, metric, difference=True)}] (n={p.n})"


def metric_title(metric: str) -> str:
    return f"{metric} {'↑' if higher_is_better(metric) else '↓'}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *[line(r) for r in rows]]


def markdown(ev: Evaluation) -> str:
    pct = f"{ev.config.confidence:.0%}"
    lines = [
        "# Evaluation",
        "",
        f"Runs: {', '.join(f'`{r.url}`' for r in ev.runs)}.",
        "",
        f"Cells: mean ± sample std over images (n = images with a value, of the arm's images without error). "
        f"Differences are paired over the images both arms have: mean of the per-image difference "
        f"[{pct} Student-t interval] (n). ↑ higher is better, ↓ lower is better. psnr and ssim are the job's own "
        "(float output); the other metrics are computed on the written PNGs. "
        "Arms: " + "; ".join(f"{m} = {t}" for m, t in MODE_TITLES.items()) + ".",
    ]
    for task in ev.tasks:
        arms = ev.arms_of(task)
        lines += ["", f"## {task}", "", "### Mean ± std per arm", ""]
        header = ["metric"] + [a.label for a in arms]
        rows = [[metric_title(m)] + [summary_cell(summarize(a, m), m) for a in arms] for m in ev.metrics]
        rows.append(["images (errors)"] + [f"{len(a.good)} ({len(a.errors)})" for a in arms])
        lines += _md_table(header, rows)
        pairs = ev.comparisons_of(task)
        if pairs:
            lines += ["", f"### Paired differences [{pct} interval]", ""]
            header = ["metric"] + [c.title for c in pairs]
            rows = [[metric_title(m)] + [paired_cell(ev.paired(c, m), m) for c in pairs] for m in ev.metrics]
            lines += _md_table(header, rows)
        missing = [(a, m, reason, count) for a in arms for m, reasons in a.missing.items() if m in ev.metrics
                   for reason, count in sorted(reasons.items())]  # fmt: skip
        if missing:
            lines += ["", "### Missing values", ""]
            lines += [f"- {a.label}, {m}: {count} image(s): {reason}" for a, m, reason, count in missing]
        errors = [(a, row) for a in arms for row in a.errors]
        if errors:
            lines += ["", "### Error rows", ""]
            lines += [f"- {a.label}: `{row['image_id']}` [{row.get('stage')}] {str(row['error']).splitlines()[0]}" for a, row in errors]
    if ev.unavailable or ev.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {m}: unavailable here: {reason}" for m, reason in ev.unavailable.items()]
        lines += [f"- {note}" for note in ev.notes]
    return "\n".join(lines) + "\n"


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return sink.getvalue().encode("utf-8")


def summary_csv(ev: Evaluation) -> bytes:
    rows = []
    for arm in ev.arms:
        for m in ev.metrics:
            s = summarize(arm, m)
            rows.append([arm.task, arm.label, arm.mode, m, higher_is_better(m), s.n, s.images, len(arm.errors), s.mean, s.std])
    return _csv(["task", "arm", "mode", "metric", "higher_is_better", "n", "images", "errors", "mean", "std"], rows)


def paired_csv(ev: Evaluation) -> bytes:
    rows = []
    for c in ev.comparisons:
        for m in ev.metrics:
            p = ev.paired(c, m)
            rows.append([c.arm.task, c.arm.label, c.reference.label, m, higher_is_better(m), p.n, p.mean, p.std,
                         p.low, p.high, p.confidence, p.p_value])  # fmt: skip
    header = ["task", "arm", "reference", "metric", "higher_is_better", "n", "mean_difference", "std_difference",
              "ci_low", "ci_high", "confidence", "p_value"]  # fmt: skip
    return _csv(header, rows)


def per_image_csv(ev: Evaluation) -> bytes:
    rows = []
    for arm in ev.arms:
        for image_id in sorted(arm.rows):
            row = arm.rows[image_id]
            error = None if arm.mode == PLAIN else row.get("error")
            values = arm.values.get(image_id, {})
            rows.append([arm.task, arm.label, arm.mode, image_id, error, *[values.get(m) for m in ev.metrics]])
    return _csv(["task", "arm", "mode", "image_id", "error", *ev.metrics], rows)


OUTPUTS = ("results.md", "summary.csv", "paired.csv", "per_image.csv")


def write(ev: Evaluation, *, progress: bool = False) -> dict[str, str]:
    """Write results.md, the three CSVs and (unless disabled) report.html under config.out; returns their URLs."""
    out, options = ev.config.out, ev.config.storage_options
    written = {}
    for name, data in (("results.md", markdown(ev).encode("utf-8")), ("summary.csv", summary_csv(ev)),
                       ("paired.csv", paired_csv(ev)), ("per_image.csv", per_image_csv(ev))):  # fmt: skip
        url = join_url(out, name)
        commit_bytes(url, data, options)
        written[name] = url
    if ev.config.report:
        from pipelines.report import write_report

        written["report.html"] = write_report(ev, progress=progress)
    return written


def headline(ev: Evaluation, metrics: Sequence[str] = ("psnr", "ssim")) -> str:
    """The paired differences of ADIR against its references, one line each, for a terminal."""
    lines = []
    for c in ev.comparisons:
        if c.arm.mode != "adir":
            continue
        cells = [f"{m} {paired_cell(ev.paired(c, m), m)}" for m in metrics if m in ev.metrics]
        if cells:
            lines.append(f"{c.arm.task}: {c.title}: " + "; ".join(cells))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics is not None else (REPORT,)
    config = EvaluateConfig(
        runs=tuple(args.runs), out=args.out, baseline_mode=args.baseline_mode, metrics=metrics,
        confidence=args.confidence, report=not args.no_report, report_images=args.report_images,
        report_neighbours=args.report_neighbours, threads=args.threads,
    )  # fmt: skip
    ev = evaluate(config, progress=not args.no_progress)
    written = write(ev, progress=not args.no_progress)
    text = headline(ev)
    if text:
        print(text)
    print("wrote " + ", ".join(written.values()))
    return 0
