"""The report's tables and its headline: means and paired differences per task as HTML, and per-image difference plots."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from adir_storage import redact_text
from pipelines.evaluation.config import PLAIN
from pipelines.evaluation.evaluation import Evaluation
from pipelines.evaluation.statistics import metric_column, paired_difference, summarize
from pipelines.evaluation.tables import first_line, higher_is_better, metric_title, paired_cell, summary_cell


def _e(text: Any) -> str:
    """Text made safe for the page, inside an attribute too: HTML-escaped, and any URL's credentials redacted."""
    return html.escape(redact_text(str(text)), quote=True)


def metrics_tables(ev: Evaluation, task: str) -> str:
    """A task's mean ± std per arm, its paired differences and its error rows."""
    arms = ev.arms_of(task)
    parts = ['<h3>Mean ± std per arm</h3><table class="metrics"><tr><th>metric</th>']
    parts += [f"<th>{_e(a.label)}</th>" for a in arms] + ["</tr>"]
    for m in ev.metrics:
        parts.append(
            f"<tr><th>{_e(metric_title(m))}</th>"
            + "".join(f"<td>{_e(summary_cell(summarize(a, m), m))}</td>" for a in arms)
            + "</tr>"
        )
    parts.append(
        "<tr><th>images (errors)</th>"
        + "".join(f"<td>{len(a.good)} ({len(a.errors)})</td>" for a in arms)
        + "</tr></table>"
    )
    pairs = ev.comparisons_of(task)
    if pairs:
        parts.append(
            f'<h3>Paired differences [{ev.config.confidence:.0%} interval]</h3><table class="metrics"><tr><th>metric</th>'
        )
        parts += [f"<th>{_e(c.title)}</th>" for c in pairs] + ["</tr>"]
        for m in ev.metrics:
            parts.append(
                f"<tr><th>{_e(metric_title(m))}</th>"
                + "".join(f"<td>{_e(paired_cell(ev.paired(c, m), m))}</td>" for c in pairs)
                + "</tr>"
            )
        parts.append("</table>")
    errors = [(a, row) for a in arms for row in a.errors]
    if errors:
        parts.append("<h3>Error rows</h3><ul>")
        parts += [
            f"<li>{_e(a.label)}: <code>{_e(row['image_id'])}</code> [{_e(row.get('stage'))}] {_e(first_line(row['error']))}</li>"
            for a, row in errors
        ]
        parts.append("</ul>")
    return "".join(parts)


# ---------------------------------------------------------------------- the headline
# What a reader wants first: does ADIR beat no adaptation and the naive inverse, in the paper's
# kind of metric (perceptual, no-reference) and in distortion? One row per task and metric.
HEADLINE_METRICS = ("stlpips", "niqe", "brisque", "piqe", "psnr", "ssim")
PLOT_METRICS = ("psnr", "stlpips")


def _headline_arms(ev: Evaluation, task: str):
    """(ADIR arm, its no-adaptation reference, the plain restoration) of a task; None where absent."""
    arms = ev.arms_of(task)
    adir = next((a for a in arms if a.mode == "adir"), None)
    baseline = next(
        (
            c.reference
            for c in ev.comparisons_of(task)
            if c.arm is adir and c.reference.mode == ev.config.baseline_mode
        ),
        None,
    )
    return adir, baseline, next((a for a in arms if a.mode == PLAIN), None)


def headline_section(ev: Evaluation) -> str:
    """ADIR vs no adaptation vs the naive inverse: means, and paired differences with intervals, per task."""
    metrics = [m for m in HEADLINE_METRICS if m in ev.metrics]
    parts = [
        '<h2 id="headline">Headline: ADIR against no adaptation and the naive inverse</h2>',
        f"<p>Means over the images (± std), and paired differences ADIR − other [{ev.config.confidence:.0%} Student-t "
        "interval] over the images both have. An interval that excludes 0 is a difference this run resolves. "
        "↑ higher is better, ↓ lower is better.</p>",
        '<table class="metrics"><tr><th>task</th><th>metric</th><th>naive inverse</th><th>no adaptation</th><th>ADIR</th>'
        "<th>ADIR − no adaptation</th><th>ADIR − naive inverse</th></tr>",
    ]
    for task in ev.tasks:
        adir, baseline, plain = _headline_arms(ev, task)
        if adir is None:
            continue
        for m in metrics:
            cells = [summary_cell(summarize(a, m), m) if a is not None else "—" for a in (plain, baseline, adir)]
            diffs = [
                paired_cell(paired_difference(metric_column(adir, m), metric_column(ref, m), ev.config.confidence), m)
                if ref is not None
                else "—"
                for ref in (baseline, plain)
            ]
            parts.append(
                f"<tr><th>{_e(task)}</th><th>{_e(metric_title(m))}</th>"
                + "".join(f"<td>{_e(c)}</td>" for c in cells + diffs)
                + "</tr>"
            )
    parts.append("</table>")
    parts.append(_difference_plots(ev))
    return "".join(parts)


def _difference_plots(ev: Evaluation) -> str:
    """One dot per image: ADIR − no adaptation, per task and metric (inline SVG, no files)."""
    plots = []
    for task in ev.tasks:
        adir, baseline, _ = _headline_arms(ev, task)
        if adir is None or baseline is None:
            continue
        for m in (m for m in PLOT_METRICS if m in ev.metrics):
            a, b = metric_column(adir, m), metric_column(baseline, m)
            ids = sorted(set(a) & set(b))
            if not ids:
                continue
            plots.append(
                _dot_plot(
                    f"{task}: {metric_title(m)}, ADIR − no adaptation ({'higher' if higher_is_better(m) else 'lower'} is better)",
                    [(i, a[i] - b[i]) for i in ids],
                    higher_is_better(m),
                )
            )
    if not plots:
        return ""
    return '<h3>Per-image paired differences</h3><div class="plots">' + "".join(plots) + "</div>"


def _dot_plot(
    title: str, points: Sequence[tuple[str, float]], higher: bool, width: int = 360, height: int = 150
) -> str:
    """Green dots where ADIR did better on that image, red where worse (by the metric's own direction)."""
    left, right, top, bottom = 40, 10, 22, 18
    values = [v for _, v in points]
    span = max(max(abs(v) for v in values), 1e-9) * 1.1

    def y(v: float) -> float:
        return top + (height - top - bottom) * (span - v) / (2 * span)

    step = (width - left - right) / max(len(points), 1)
    dots = "".join(
        f'<circle cx="{left + step * (k + 0.5):.1f}" cy="{y(v):.1f}" r="3" fill="{"#888" if v == 0 else "#2a7" if (v > 0) == higher else "#c33"}">'
        f"<title>{_e(i)}: {v:+.4g}</title></circle>"
        for k, (i, v) in enumerate(points)
    )
    axis = (
        f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#888"/>'
        f'<text x="{left - 4}" y="{y(span / 1.1) + 4:.1f}" text-anchor="end" font-size="10">{span / 1.1:+.3g}</text>'
        f'<text x="{left - 4}" y="{y(0) + 4:.1f}" text-anchor="end" font-size="10">0</text>'
        f'<text x="{left - 4}" y="{y(-span / 1.1) + 4:.1f}" text-anchor="end" font-size="10">{-span / 1.1:+.3g}</text>'
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}"><text x="{left}" y="14" font-size="11">'
        f"{_e(title)}</text>{axis}{dots}</svg>"
    )
