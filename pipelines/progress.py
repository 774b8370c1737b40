"""The reconstruct progress line: images done, output megapixels per second, time left for the job, stage means."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from cluster.results import PIPELINE_STAGES

STAGE_COLUMNS = PIPELINE_STAGES  # the stage means the line shows: the method's own stages
# tqdm's own rate and ETA count images; with images of 0.3 and 12 MP in one job they mislead, so the line
# shows ours (from output pixels) in the postfix instead.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def duration(seconds: float) -> str:
    """42s, 3m20s, 2h05m, 3d04h: two units at most, as a person reads a countdown."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def rate_and_eta(megapixels: float, images: int, sized: int, seconds: float, left: int) -> str:
    """The line's "0.42 MP/s, ETA 3m20s": output megapixels per wall second over the `images` finished so far (all
    actors together), and the time the `left` images would take at that rate if they are as large as the
    `sized` ones that produced pixels (error rows produce none, but their time counts).

    Before any image finishes there is nothing to measure: "ETA ?".
    """
    if images <= 0 or seconds <= 0:
        return "ETA ?"
    if megapixels <= 0 or sized <= 0:  # only error rows so far: time per image is all there is
        return f"0 MP/s, ETA {duration(left * seconds / images)}"
    rate = megapixels / seconds
    eta = left * (megapixels / sized) / rate
    shown = "<0.001" if rate < 0.001 else f"{rate:.3g}" if rate < 100 else f"{rate:.0f}"  # never 3.9e+04
    return f"{shown} MP/s, ETA {duration(eta)}"


class JobProgress:
    """done / total with the MP/s rate, the job's ETA, per-stage mean seconds and a count of error rows (tqdm).

    The clock starts at `start()` (when the actors are ready), so start-up is not counted as work.
    """

    def __init__(self, total: int, done: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            unit="img",
            desc="reconstruct",
            disable=not enabled,
            file=sys.stderr,
            bar_format=BAR_FORMAT,
        )
        self.sums = dict.fromkeys(STAGE_COLUMNS, 0.0)
        self.count = 0
        self.errors = 0
        self.megapixels = 0.0
        self.sized = 0
        self.left = total - done
        self.started = time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()
        self.bar.set_postfix_str(rate_and_eta(0.0, 0, 0, 0.0, self.left))

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.count += 1
        self.left -= 1
        self.errors += row.get("error") is not None
        for stage in STAGE_COLUMNS:
            self.sums[stage] += row.get(f"{stage}_s") or 0.0
        if row.get("error") is None and row.get("width") and row.get("height"):
            self.megapixels += row["width"] * row["height"] / 1e6
            self.sized += 1
        elapsed = time.perf_counter() - self.started
        means = ", ".join(f"{s[:5]} {v / self.count:.2f}s" for s, v in self.sums.items())
        line = rate_and_eta(self.megapixels, self.count, self.sized, elapsed, self.left)
        self.bar.set_postfix_str(f"{line}, {means}, errors {self.errors}", refresh=False)
        self.bar.update(1)  # one print per image, with its new figures

    def close(self) -> None:
        self.bar.close()
