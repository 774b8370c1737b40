"""The evaluation: read the runs, group them into arms, fill every metric and pair the arms (writes nothing)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.evaluation.arms import Arm, Comparison, Run, comparisons, group_arms
from pipelines.evaluation.config import EvaluateConfig
from pipelines.evaluation.metrics import fill_metrics, torch_threads
from pipelines.evaluation.run_folder import read_run
from pipelines.evaluation.statistics import Paired, metric_column, paired_difference
from pipelines.evaluation.views import ViewCache


@dataclass
class Evaluation:
    """What evaluate() found: the runs, their arms with every metric filled, and the comparisons to report."""

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
        return paired_difference(
            metric_column(comparison.arm, metric), metric_column(comparison.reference, metric), self.config.confidence
        )


def evaluate(config: EvaluateConfig, *, progress: bool = False) -> Evaluation:
    """Read the runs, group them into arms, fill every metric and pair the arms; writes nothing."""
    runs = [read_run(url, config.storage_options) for url in config.runs]
    empty = [r.url for r in runs if not r.rows]
    if len(empty) == len(runs):
        raise ValueError(f"{', '.join(empty)}: results.parquet has no rows; nothing to evaluate")
    arms = group_arms(runs)
    names = config.metric_names()
    views = ViewCache(config.storage_options)
    with torch_threads(config.threads):
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
