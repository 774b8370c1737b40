"""What `adir evaluate` reads, computes and writes: EvaluateConfig, and the names of the plain arm and the metric sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster.config import MODES

PLAIN = "plain"
STORED_METRICS = ("psnr", "ssim")  # columns of results.parquet
OFFLINE = "offline"  # every metric that runs with no download
REPORT = "report"  # the perceptual and distortion metrics a report leads with
MODE_TITLES = {
    PLAIN: "plain restoration",
    "baseline": "no adaptation",
    "adir": "ADIR (encoder K-NN)",
    "random-nn": "random-NN",
    "mse-nn": "MSE-NN (pixel K-NN)",
}


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
                from adir_ops.metrics.quality import DEFAULT_REPORT_METRICS, OFFLINE_METRICS

                names.extend(OFFLINE_METRICS if name == OFFLINE else DEFAULT_REPORT_METRICS)
            else:
                names.append(name)
        return tuple(dict.fromkeys(names))
