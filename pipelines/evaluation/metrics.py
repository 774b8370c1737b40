"""Each arm's per-image metric values: the job's stored PSNR/SSIM, and the others computed here on the PNGs."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from typing import Any

from pipelines.evaluation.arms import Arm
from pipelines.evaluation.config import PLAIN, STORED_METRICS
from pipelines.evaluation.views import ViewCache, read_output


def _first_line(exc: BaseException) -> str:
    # Long paths sit in the middle of our messages and the reason and fix at the end,
    # so a long line loses its middle, never its end.
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= 300 else text[:150] + " ... " + text[-145:]


def fill_metrics(
    arms: Sequence[Arm], names: Sequence[str], views: ViewCache, progress: bool = False
) -> dict[str, str]:
    """Fill each arm's per-image values; returns {metric: reason} for metrics that cannot run at all here.

    Stored metrics come from the rows (the plain arm's PSNR from naive_psnr); the others are
    computed on the PNG (the plain arm: on the float restoration) against the ground truth,
    batched by image size. A metric that fails on a batch is retried image by image, so one
    degenerate image costs only its own value, with its reason recorded.
    """
    from adir_ops.metrics.quality import available_metrics

    computed = [n for n in names if n not in STORED_METRICS]
    unavailable = {n: r for n, r in available_metrics(computed).items() if r is not None} if computed else {}
    computed = [n for n in computed if n not in unavailable]
    # The plain arm has no SSIM column: it gets SSIM like the computed metrics.
    plain_computed = [n for n in names if n != "psnr" and n not in unavailable]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(a.good) for a in arms), unit="img", desc="metrics", file=sys.stderr)
    for arm in arms:
        wanted = plain_computed if arm.mode == PLAIN else computed
        batches: dict[tuple, list[tuple[str, Any, Any]]] = {}
        for image_id in arm.good:
            row, run = arm.rows[image_id], arm.runs[image_id]
            values = arm.values.setdefault(image_id, {})
            stored = {"psnr": row.get("naive_psnr")} if arm.mode == PLAIN else {n: row.get(n) for n in STORED_METRICS}
            for name in (n for n in names if n in stored):
                value = stored[name]
                if value is None or not math.isfinite(value):
                    arm.set_missing(name, "no value in results.parquet (no ground truth, or not computed by the job)")
                else:
                    values[name] = float(value)
            if not wanted:
                continue
            try:
                view = views.get(row, run)
                image = view.plain01 if arm.mode == PLAIN else read_output(row, run, views.storage_options)
            except Exception as exc:
                for name in wanted:
                    arm.set_missing(name, f"could not rebuild the image: {_first_line(exc)}")
                continue
            batches.setdefault(tuple(image.shape), []).append((image_id, image, view.truth01))
        for items in batches.values():
            for name in wanted:
                _compute(arm, name, items)
        if bar is not None:
            bar.update(len(arm.good))
    if bar is not None:
        bar.close()
    return unavailable


def _compute(arm: Arm, name: str, items: list[tuple[str, Any, Any]]) -> None:
    """One metric over same-size images (id, image, truth); values into arm.values, failures into arm.missing."""
    import torch

    from adir_ops.metrics.quality import compute_metrics, is_full_reference

    full_reference = is_full_reference(name)
    if full_reference:
        for _ in (it for it in items if it[2] is None):
            arm.set_missing(name, "no ground truth for this image")
        items = [it for it in items if it[2] is not None]
    if not items:
        return
    x = torch.stack([it[1] for it in items])
    ref = torch.stack([it[2] for it in items]) if full_reference else None
    try:
        for (image_id, *_), value in zip(items, compute_metrics(x, ref, names=[name])[name]):
            arm.values[image_id][name] = float(value)
        return
    except ValueError:
        pass
    for i, (image_id, *_) in enumerate(items):
        try:
            one = compute_metrics(x[i : i + 1], None if ref is None else ref[i : i + 1], names=[name])[name]
            arm.values[image_id][name] = float(one[0])
        except ValueError as exc:
            arm.set_missing(name, _first_line(exc))


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op thread count set for the block and restored after it (the caller's setting is not ours to keep)."""
    if threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
