"""Image bytes ↔ tensors for the worker: full-size robust decoding (the index builder's rules) and PNG encoding."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

# The index builder's decoder, reused so inputs, neighbours and the corpus are read alike
# (decompression-bomb guard, EXIF rotation, any mode → 8-bit RGB).
from index_builder.reader import DecodeError, decode_image, decode_rgb

__all__ = ["DecodeError", "decode_rgb", "decode_thumbnail", "encode_png", "to_tensor01"]


def decode_thumbnail(data: bytes, size: int) -> np.ndarray:
    """The index builder's own centre-square thumbnail (size, size, 3) uint8: pixel-MSE retrieval compares these."""
    return decode_image(data, size)[0]


def to_tensor01(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 → (C, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1).float().div(255.0)


def encode_png(image01: torch.Tensor) -> bytes:
    """(C, H, W) float in [0, 1] (C in {1, 3}) → PNG bytes, RGB."""
    array = image01.detach().clamp(0, 1).mul(255).round().to("cpu", torch.uint8)
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    sink = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy())).save(sink, format="PNG")
    return sink.getvalue()
