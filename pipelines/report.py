"""The evaluation's HTML report; it lives in pipelines.evaluation.report, re-exported here for the old import path."""

from pipelines.evaluation.report import (
    CAPTION_METRICS,
    DISPLAY_WIDTH,
    FILES_DIR,
    REPORT_NAME,
    STYLE,
    THUMBNAIL,
    THUMBNAIL_DISPLAY,
    render,
    write_report,
)
from pipelines.evaluation.report_tables import HEADLINE_METRICS, PLOT_METRICS

__all__ = [
    "CAPTION_METRICS",
    "DISPLAY_WIDTH",
    "FILES_DIR",
    "HEADLINE_METRICS",
    "PLOT_METRICS",
    "REPORT_NAME",
    "STYLE",
    "THUMBNAIL",
    "THUMBNAIL_DISPLAY",
    "render",
    "write_report",
]
