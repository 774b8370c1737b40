"""The evaluation as text: cells and titles, results.md, the three CSVs and the terminal headline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.evaluation.config import MODE_TITLES, PLAIN
from pipelines.evaluation.csv_cells import csv_bytes
from pipelines.evaluation.evaluation import Evaluation
from pipelines.evaluation.statistics import Paired, Summary, summarize


def higher_is_better(metric: str) -> bool:
    from adir_ops.metrics.quality import lower_is_better

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


def first_line(text: Any) -> str:
    """The first line of a message ("" for an empty one: a hand-made error row may hold "")."""
    return (str(text).splitlines() or [""])[0]


def _md(text: Any) -> str:
    """Text on one Markdown line: an id with a line break in it must not start a heading or a row of its own."""
    return " ".join(str(text).splitlines())


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(_md(c).replace("|", "\\|") for c in cells) + " |"

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
        missing = [
            (a, m, reason, count)
            for a in arms
            for m, reasons in a.missing.items()
            if m in ev.metrics
            for reason, count in sorted(reasons.items())
        ]
        if missing:
            lines += ["", "### Missing values", ""]
            lines += [f"- {a.label}, {m}: {count} image(s): {_md(reason)}" for a, m, reason, count in missing]
        errors = [(a, row) for a in arms for row in a.errors]
        if errors:
            lines += ["", "### Error rows", ""]
            lines += [
                f"- {a.label}: `{_md(row['image_id'])}` [{_md(row.get('stage'))}] {_md(first_line(row['error']))}"
                for a, row in errors
            ]
    if ev.unavailable or ev.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {m}: unavailable here: {reason}" for m, reason in ev.unavailable.items()]
        lines += [f"- {note}" for note in ev.notes]
    return "\n".join(lines) + "\n"


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    return csv_bytes(header, rows)


def summary_csv(ev: Evaluation) -> bytes:
    rows = []
    for arm in ev.arms:
        for m in ev.metrics:
            s = summarize(arm, m)
            rows.append(
                [arm.task, arm.label, arm.mode, m, higher_is_better(m), s.n, s.images, len(arm.errors), s.mean, s.std]
            )
    return _csv(["task", "arm", "mode", "metric", "higher_is_better", "n", "images", "errors", "mean", "std"], rows)


def paired_csv(ev: Evaluation) -> bytes:
    rows = []
    for c in ev.comparisons:
        for m in ev.metrics:
            p = ev.paired(c, m)
            rows.append(
                [
                    c.arm.task,
                    c.arm.label,
                    c.reference.label,
                    m,
                    higher_is_better(m),
                    p.n,
                    p.mean,
                    p.std,
                    p.low,
                    p.high,
                    p.confidence,
                    p.p_value,
                ]
            )
    header = [
        "task",
        "arm",
        "reference",
        "metric",
        "higher_is_better",
        "n",
        "mean_difference",
        "std_difference",
        "ci_low",
        "ci_high",
        "confidence",
        "p_value",
    ]
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
