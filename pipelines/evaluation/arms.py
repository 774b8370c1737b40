"""Runs and arms: read a run folder, group its rows into (task, mode, settings) arms, label them and pair them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adir_storage import redact_text
from cluster.config import TASKS
from pipelines.evaluation.config import PLAIN

# Options that never change an image's result, or that are the arm's own coordinates.
NOT_SETTINGS = frozenset(
    {
        "task",
        "mode",
        "out",
        "inputs",
        "reference",
        "limit",
        "storage_options",
        "num_actors",
        "cpus_per_actor",
        "gpus_per_actor",
        "max_restarts",
        "max_attempts",
        "tile_batch",
        "metrics",
        "max_pixels",  # refuse sizes, never change a result
        "max_input_bytes",
    }
)
# Options a mode does not use: two baseline runs that differ only in lora_steps are the same arm.
# `lora` is the nested AdaptConfig of today's config.yaml; the lora_* names are older runs' flat keys.
_LORA = ("index", "k", "lora", "lora_steps", "lora_rank", "lora_alpha", "lora_learning_rate", "lora_batch_size")
UNUSED_BY_MODE = {
    "baseline": frozenset({*_LORA, "embedder", "mse_thumbnail", "index_identity"}),
    "adir": frozenset({"mse_thumbnail"}),
    "random-nn": frozenset({"embedder", "mse_thumbnail"}),
    "mse-nn": frozenset({"embedder"}),
}
# The plain restoration depends on the degradation alone.
PLAIN_SETTINGS = ("seed", "noise_sigma_255", "degraded")
MODE_ORDER = (PLAIN, "baseline", "adir", "random-nn", "mse-nn")
# ADIR is also compared with the other two neighbour choices (paper Table 5).
ADIR_REFERENCES = ("random-nn", "mse-nn")


@dataclass
class Run:
    url: str
    config: dict[str, Any]  # OUT/config.yaml ({} when absent)
    rows: list[dict[str, Any]]
    reference_uris: dict[str, str | None] | None = None  # degraded runs: image_id -> ground truth, listed once
    listed: dict[str, frozenset[str] | Exception] = field(default_factory=dict)  # a list file's URIs, read once


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


def _settings(mode: str, config: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """The options that decide this mode's results; without config.yaml, what the row itself records."""
    source = dict(config) if config else {"seed": row.get("seed"), "k": row.get("k")}
    unused = NOT_SETTINGS | UNUSED_BY_MODE.get(mode, frozenset())
    settings = {}
    for key, value in sorted(source.items(), key=lambda kv: str(kv[0])):
        if key in unused:
            continue
        if key == "lora" and isinstance(value, Mapping):  # nested: one setting per field, labelled lora.steps=50
            settings.update({f"lora.{k}": v for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))})
        else:
            settings[key] = value
    return settings


def freeze(value: Any) -> Any:
    """A hashable, comparable form of a config value (a hand-written config.yaml may hold sets, or keys of mixed types)."""
    if isinstance(value, Mapping):
        return tuple(sorted(((k, freeze(v)) for k, v in value.items()), key=lambda kv: repr(kv[0])))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted((freeze(v) for v in value), key=repr))
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
            key = (task, mode, freeze(settings))
            arm = arms.setdefault(key, Arm(task, mode, settings))
            _add_row(arm, run, row)
            if row.get("error") is not None:
                continue
            plain_settings = {k: (run.config or row).get(k) for k in PLAIN_SETTINGS}
            plain = plains.setdefault((task, freeze(plain_settings)), Arm(task, PLAIN, plain_settings))
            # The plain restoration is the same in every arm of a degradation: keep the first.
            if row["image_id"] not in plain.rows:
                _add_row(plain, run, row)
    everything = list(plains.values()) + list(arms.values())
    _label(everything)
    tasks = {t: i for i, t in enumerate(TASKS)}
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    return sorted(
        everything, key=lambda a: (tasks.get(a.task, len(tasks)), a.task, order.get(a.mode, len(order)), a.label)
    )


def _label(arms: Sequence[Arm]) -> None:
    """Mode name, plus the settings in which arms of one (task, mode) differ."""
    groups: dict[tuple[str, str], list[Arm]] = {}
    for arm in arms:
        groups.setdefault((arm.task, arm.mode), []).append(arm)
    for group in groups.values():
        keys = sorted({k for arm in group for k in arm.settings})
        differ = [k for k in keys if len({freeze(arm.settings.get(k)) for arm in group}) > 1]
        for arm in group:
            # Redacted: a label is printed, written to every table and named in report file names,
            # and a setting such as `index` may be a URL with a password in it.
            arm.label = redact_text(" ".join([arm.mode] + [f"{k}={arm.settings.get(k)}" for k in differ]))


def _matches(a: Arm, b: Arm) -> bool:
    """Same task, and the same value for every setting both arms have."""
    return a.task == b.task and all(
        freeze(a.settings[k]) == freeze(b.settings[k]) for k in set(a.settings) & set(b.settings)
    )


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
                notes.append(
                    f"{arm.task}: no {mode} arm has the settings of '{arm.label}'; that comparison is left out"
                )
    return pairs, notes
