"""Image bytes ↔ tensors for the worker: full-size robust decoding (the index builder's rules) and PNG encoding."""

from __future__ import annotations

import io
import warnings
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps

# The index builder's decoder rules, reused so inputs, neighbours and the corpus are read alike:
# the decompression-bomb limit, its error type, and its any-mode → 8-bit RGB conversion
# (16-bit scaled, transparency over white). Its public `decode_image` returns the encoder's
# centre square; reconstruction needs the whole image at full size, hence this wrapper.
from index_builder.reader import DEFAULT_MAX_IMAGE_PIXELS, DecodeError, _to_rgb, decode_image, fetch_bytes
from index_builder.sources import open_fs

__all__ = ["DecodeError", "decode_rgb", "decode_thumbnail", "encode_png", "read_bytes", "to_tensor01"]


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = open_fs(uri, storage_options)
    return fs.cat_file(path)


def decode_rgb(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded bytes → (H, W, 3) uint8 RGB at full size, EXIF-rotated; DecodeError for anything unusable."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_image_pixels
        try:
            img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > max_image_pixels:
                raise DecodeError(f"declared size {img.size[0]}x{img.size[1]} exceeds max_image_pixels={max_image_pixels}")
            img.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise DecodeError(f"decompression bomb guard: {exc}") from exc
        except DecodeError:
            raise
        except Exception as exc:  # PIL raises many types for bad files
            raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    return np.asarray(_to_rgb(ImageOps.exif_transpose(img)), dtype=np.uint8)


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


def fetch_many(uris: list[str], storage_options: Mapping[str, Any] | None, threads: int = 16) -> list[bytes | BaseException]:
    """Bytes of each URI or its exception, concurrently (the index builder's fetcher)."""
    return fetch_bytes(uris, storage_options or {}, threads)
