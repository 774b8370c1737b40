"""`adir evaluate`: per task and arm, every metric's mean ± std over images and paired differences with t-intervals, as Markdown, CSV and HTML.

An ARM is one (task, mode, settings) combination: `adir reconstruct` runs that agree on task,
mode and every option that decides that mode's results are one arm (a dataset split over
several OUT folders is merged); runs that differ in such an option (say `lora.steps`) are
separate arms, labelled by what differs ("adir lora.steps=100"). Each task also gets the
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

Modules, each importing only those above it: config, csv_cells → arms → run_folder, statistics, views →
metrics → evaluation → tables → report_tables → report → outputs.
"""

from pipelines.evaluation.arms import (
    ADIR_REFERENCES,
    MODE_ORDER,
    NOT_SETTINGS,
    PLAIN_SETTINGS,
    UNUSED_BY_MODE,
    Arm,
    Comparison,
    Run,
    comparisons,
    group_arms,
)
from pipelines.evaluation.config import MODE_TITLES, OFFLINE, PLAIN, REPORT, STORED_METRICS, EvaluateConfig
from pipelines.evaluation.evaluation import Evaluation, evaluate
from pipelines.evaluation.metrics import fill_metrics
from pipelines.evaluation.outputs import OUTPUTS, write
from pipelines.evaluation.report import write_report
from pipelines.evaluation.run_folder import read_run
from pipelines.evaluation.statistics import Paired, Summary, metric_column, paired_difference, summarize
from pipelines.evaluation.tables import (
    DB_METRICS,
    fmt,
    headline,
    higher_is_better,
    markdown,
    metric_title,
    paired_cell,
    paired_csv,
    per_image_csv,
    summary_cell,
    summary_csv,
)
from pipelines.evaluation.views import ViewCache, Views, input_uri, output_url, read_output, reproduce_views

__all__ = [
    "ADIR_REFERENCES",
    "DB_METRICS",
    "MODE_ORDER",
    "MODE_TITLES",
    "NOT_SETTINGS",
    "OFFLINE",
    "OUTPUTS",
    "PLAIN",
    "PLAIN_SETTINGS",
    "REPORT",
    "STORED_METRICS",
    "UNUSED_BY_MODE",
    "Arm",
    "Comparison",
    "EvaluateConfig",
    "Evaluation",
    "Paired",
    "Run",
    "Summary",
    "ViewCache",
    "Views",
    "comparisons",
    "evaluate",
    "fill_metrics",
    "fmt",
    "group_arms",
    "headline",
    "higher_is_better",
    "input_uri",
    "markdown",
    "metric_column",
    "metric_title",
    "output_url",
    "paired_cell",
    "paired_csv",
    "paired_difference",
    "per_image_csv",
    "read_output",
    "read_run",
    "reproduce_views",
    "summarize",
    "summary_cell",
    "summary_csv",
    "write",
    "write_report",
]
