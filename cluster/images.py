"""Image bytes ↔ tensors for the worker: full-size robust decoding (the index builder's rules), the job's observation of an input, PNG encoding."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

# The index builder's decoder, reused so inputs, neighbours and the corpus are read alike
# (decompression-bomb guard, EXIF rotation, any mode → 8-bit RGB).
from index_builder.reader import decode_image, decode_rgb

__all__ = [
    "check_pixels",
    "decode_input",
    "decode_thumbnail",
    "encode_png",
    "observe_input",
    "to_tensor01",
]


class TooLarge(ValueError):
    """An image whose reconstruction would exceed --max-pixels: refused from its header, before decoding."""


def check_pixels(data: bytes, max_pixels: int, factor: int = 1) -> None:
    """Refuse an image whose reconstruction (its sides x `factor`) has more than `max_pixels` pixels.

    Reads the header only (PIL opens lazily): a 100 MP image costs a few KB here, not its decode.
    A header PIL cannot read is left to the decoder, which names the problem.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # not an image, or a decompression bomb: decode_rgb says which
        return
    pixels = width * height * factor * factor
    if pixels <= max_pixels:
        return
    grown = f", reconstructed {factor}x larger ({width * factor} x {height * factor})" if factor > 1 else ""
    raise TooLarge(
        f"the image is {width} x {height}{grown}: {pixels} pixels ({pixels / 1e6:.1f} MP), above --max-pixels "
        f"{max_pixels} (the bound that keeps one image from taking the actor's memory). Downscale it, or raise "
        "--max-pixels on a machine with the memory for it"
    )


def decode_thumbnail(data: bytes, size: int) -> np.ndarray:
    """The index builder's own centre-square thumbnail (size, size, 3) uint8: pixel-MSE retrieval compares these."""
    return decode_image(data, size)[0]


def to_tensor01(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 → (C, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1).float().div(255.0)


def decode_input(data: bytes) -> torch.Tensor:
    """An input image's (or its ground truth's) bytes as the job reads them: (1, C, H, W) float32 in [0, 1]."""
    return to_tensor01(decode_rgb(data)).unsqueeze(0)


def observe_input(
    task: str,
    pixels01: torch.Tensor,
    *,
    seed: int,
    image_id: str,
    degraded: bool = False,
    reference01: torch.Tensor | None = None,
    noise_sigma_255: float | None = None,
    degradation: str = "known",
):
    """The job's observation of one decoded input (adir_ops.physics.operators.Observation: operator, y, truth01).

    The worker's degrade stage, and what the evaluation report rebuilds (pipelines.evaluation.views): one
    function, so the report's y is the worker's to the bit. The degradation draws from the image's own
    stream (adir_ops.rng.image_streams), the same in every mode: the arms differ by their neighbours alone.
    degradation="auto" estimates a degraded input's operator from it (deterministic: the report rebuilds the same).
    """
    from adir_ops.physics.operators import observe
    from adir_ops.rng import image_streams

    options = {} if noise_sigma_255 is None else {"noise_sigma_255": noise_sigma_255}
    stream = image_streams(seed, image_id)["degrade"]
    return observe(
        task,
        pixels01,
        degraded=degraded,
        reference01=reference01,
        generator=stream,
        degradation=degradation,
        **options,
    )


def encode_png(image01: torch.Tensor) -> bytes:
    """(C, H, W) float in [0, 1] (C in {1, 3}) → PNG bytes, RGB."""
    array = image01.detach().clamp(0, 1).mul_(255).round_().to("cpu", torch.uint8)  # one float copy, not three
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    sink = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy())).save(sink, format="PNG")
    return sink.getvalue()
