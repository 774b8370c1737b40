"""Write an evaluation: results.md, summary.csv, paired.csv, per_image.csv and report.html, into a folder that is ours."""

from __future__ import annotations

from adir_storage import (
    FolderRefused,
    claim_output_folder,
    commit_bytes,
    is_temporary,
    is_within,
    join_url,
    location,
    redact_text,
    redact_url,
)
from pipelines.evaluation.config import EvaluateConfig
from pipelines.evaluation.evaluation import Evaluation
from pipelines.evaluation.report import FILES_DIR, REPORT_NAME, write_report
from pipelines.evaluation.tables import markdown, paired_csv, per_image_csv, summary_csv

OUTPUTS = ("results.md", "summary.csv", "paired.csv", "per_image.csv")
JOB = "adir evaluate"


def _older_evaluation(entries: set[str]) -> bool:
    """A folder without a marker that holds every table evaluate writes and nothing else: an evaluation
    written before markers existed. A folder of the user's own results.md and summary.csv is not one."""
    ours = {*OUTPUTS, REPORT_NAME, FILES_DIR}
    entries = {e for e in entries if not is_temporary(e)}
    return set(OUTPUTS) <= entries <= ours


def claim(config: EvaluateConfig) -> bool:
    """Make config.out this evaluation's folder, or refuse it (FolderRefused) before anything is computed.

    New, empty, or an earlier `adir evaluate` output (its marker, or exactly the files it writes)
    may be written; anything else, a run folder read as input included, is refused. True when it was ours.
    """
    out = location(config.out)
    for run in config.runs:
        if is_within(out, location(run)):
            raise FolderRefused(
                f"--out {redact_url(config.out)} is or lies in the run folder {redact_url(run)}, an input of this "
                "evaluation; choose a --out outside it"
            )
    return claim_output_folder(config.out, JOB, config.storage_options, legacy=_older_evaluation, links=(FILES_DIR,))


def write(ev: Evaluation, *, progress: bool = False) -> dict[str, str]:
    """Write results.md, the three CSVs and (unless disabled) report.html under config.out; returns their URLs.

    The caller owns config.out: `adir evaluate` claims it first (claim); the demo writes into its own
    folder. Every URL credential is redacted from what is written (the CSVs also escape formulas).
    """
    out, options = ev.config.out, ev.config.storage_options
    written = {}
    for name, data in (
        ("results.md", redact_text(markdown(ev)).encode("utf-8")),
        ("summary.csv", summary_csv(ev)),
        ("paired.csv", paired_csv(ev)),
        ("per_image.csv", per_image_csv(ev)),
    ):
        url = join_url(out, name)
        commit_bytes(url, data, options)
        written[name] = url
    if ev.config.report:
        written[REPORT_NAME] = write_report(ev, progress=progress)
    return written
