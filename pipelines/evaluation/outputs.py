"""Write an evaluation: results.md, summary.csv, paired.csv, per_image.csv and report.html."""

from __future__ import annotations

from adir_storage import commit_bytes, join_url
from pipelines.evaluation.evaluation import Evaluation
from pipelines.evaluation.report import write_report
from pipelines.evaluation.tables import markdown, paired_csv, per_image_csv, summary_csv

OUTPUTS = ("results.md", "summary.csv", "paired.csv", "per_image.csv")


def write(ev: Evaluation, *, progress: bool = False) -> dict[str, str]:
    """Write results.md, the three CSVs and (unless disabled) report.html under config.out; returns their URLs."""
    out, options = ev.config.out, ev.config.storage_options
    written = {}
    for name, data in (
        ("results.md", markdown(ev).encode("utf-8")),
        ("summary.csv", summary_csv(ev)),
        ("paired.csv", paired_csv(ev)),
        ("per_image.csv", per_image_csv(ev)),
    ):
        url = join_url(out, name)
        commit_bytes(url, data, options)
        written[name] = url
    if ev.config.report:
        written["report.html"] = write_report(ev, progress=progress)
    return written
