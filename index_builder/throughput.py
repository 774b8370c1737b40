"""Per-stage throughput of a build: images and busy seconds of read/decode, embed and write, summed from the rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# Per-row columns the stages add: each row carries its share of its stage's busy time, so the
# figures survive Ray Data's re-blocking and reordering and sum to the stage's total on the driver.
READ_SECONDS = "read_seconds"
EMBED_SECONDS = "embed_seconds"
EMBED_STARTED = "embed_started"  # time.time() when the forward of the row's batch began (NaN: not forwarded)

STAGES = ("read/decode", "embed", "write")


@dataclass
class StageFigure:
    """One stage: images it handled and the seconds its workers were busy with them."""

    images: int = 0
    busy_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Images per busy second of one worker (the stage's speed, not the job's)."""
        return self.images / self.busy_seconds if self.busy_seconds > 0 else 0.0


@dataclass
class StageTimes:
    """What the driver sums over the rows it receives, plus its own write time."""

    stages: dict[str, StageFigure] = field(default_factory=lambda: {name: StageFigure() for name in STAGES})
    # time.time() when the first forward began, on whichever actor: the end of the job's start-up
    # (workers started, encoder loaded, first batch read). Wall clock, as it is compared across processes.
    first_forward: float | None = None

    def add_batch(self, batch: Mapping[str, np.ndarray], write_seconds: float) -> None:
        rows = len(batch["image_id"])
        read = self.stages["read/decode"]
        read.images += rows
        read.busy_seconds += float(np.sum(batch[READ_SECONDS])) if READ_SECONDS in batch else 0.0
        started = np.asarray(batch[EMBED_STARTED], dtype=np.float64) if EMBED_STARTED in batch else np.zeros(0)
        forwarded = ~np.isnan(started)
        if forwarded.any():
            first = float(started[forwarded].min())
            self.first_forward = first if self.first_forward is None else min(self.first_forward, first)
            embed = self.stages["embed"]
            embed.images += int(forwarded.sum())
            embed.busy_seconds += float(np.sum(batch[EMBED_SECONDS]))
        write = self.stages["write"]
        write.images += rows
        write.busy_seconds += write_seconds


def stage_table(stages: Mapping[str, StageFigure], wall_seconds: float | None = None) -> str:
    """A short text table: stage, images, busy s, images per busy second, share of the job's wall time."""
    lines = [f"{'stage':<12} {'images':>8} {'busy s':>8} {'img/s busy':>10}" + ("  busy/wall" if wall_seconds else "")]
    for name, fig in stages.items():
        line = f"{name:<12} {fig.images:>8} {fig.busy_seconds:>8.1f} {fig.rate:>10.1f}"
        if wall_seconds:
            line += f"  {fig.busy_seconds / wall_seconds:>9.2f}"
        lines.append(line)
    return "\n".join(lines)
