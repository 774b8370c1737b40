"""The CPU stage: fetch image bytes through fsspec, decode them safely and resize to the encoder's input."""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from adir_storage import MAX_READ_BYTES, fetch_many
from index_builder.throughput import READ_SECONDS

# 2**26 pixels (e.g. 8192 x 8192) is far above any real photo corpus (Open Images is at
# most 1024 px a side) yet stops a tiny file that declares a 100000 x 100000 canvas.
DEFAULT_MAX_IMAGE_PIXELS = 2**26
MAX_ERROR_CHARS = 500
ORIENTATION_TAG = 0x0112


class DecodeError(ValueError):
    """An image file that cannot become an RGB array: becomes an error row, never a crash."""


@dataclass(frozen=True)
class ReadConfig:
    """What the read stage needs; plain data, so Ray ships it to worker processes."""

    image_size: int
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_bytes: int = MAX_READ_BYTES  # bytes read per image at most: a link to /dev/zero must not take the node
    fetch_threads: int = 16
    nice: int = 0  # the read tasks' CPU priority (a nice value, 0-19); see lower_priority
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials

    def __post_init__(self):
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1; got {self.image_size}")


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit scaled (not clipped), transparency over white."""
    mode = img.mode
    if mode.startswith("I"):
        # 16-bit gray PNG/TIFF load as I;16* or I with values 0..65535: 65535 must map to 255.
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _center_square(width: int, height: int) -> tuple[float, float, float, float]:
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def load_image(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, draft_size: int | None = None):
    """Encoded bytes → (loaded PIL image, original (width, height) as displayed), bomb-guarded.

    `draft_size`: JPEGs decode at the smallest 1/2^k scale that still covers it, so a big
    photo costs a fraction of a full decode (None: full size). Width/height are read from
    the header and swapped for EXIF rotations, so they are the original's even in draft
    mode. Raises DecodeError for anything that is not a usable image.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # PIL only warns between its limit and twice it; a bomb must be an error row.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_image_pixels
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_image_pixels:
                raise DecodeError(f"declared size {width}x{height} exceeds max_image_pixels={max_image_pixels}")
            orientation = img.getexif().get(ORIENTATION_TAG, 1)
            if draft_size is not None and img.format == "JPEG":
                img.draft(None, (draft_size, draft_size))
            img.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise DecodeError(
                f"decompression bomb guard: {exc} (raise max_image_pixels if the image is genuine)"
            ) from exc
        except DecodeError:
            raise
        except Exception as exc:  # PIL raises many types for bad files; each is one DecodeError
            raise DecodeError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return img, (width, height)


def decode_rgb(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded bytes → (H, W, 3) uint8 RGB at full size, EXIF-rotated; DecodeError for anything unusable."""
    img, _ = load_image(data, max_image_pixels=max_image_pixels)
    return np.asarray(_to_rgb(ImageOps.exif_transpose(img)), dtype=np.uint8)


def decode_image(
    data: bytes, image_size: int, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, int, int]:
    """Encoded bytes → (uint8 array (image_size, image_size, 3), width, height).

    The array is the centre square, resized (CLIP's resize-then-crop); width/height are
    the original's as displayed (after EXIF rotation). Raises DecodeError for anything
    that is not a usable image.
    """
    img, (width, height) = load_image(data, max_image_pixels=max_image_pixels, draft_size=image_size)
    img = _to_rgb(ImageOps.exif_transpose(img))
    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC, box=_center_square(*img.size))
    return np.array(img, dtype=np.uint8), width, height


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value to `nice` (Linux keeps it per thread; threads it starts inherit it).

    Why the read stage does this on a CPU node: the embed actors' threads take every core, and a
    decode that preempts one of them stalls the forward's whole parallel region, whose threads
    meet at each layer. At nice 19 the scheduler favours the forward's threads over decode
    (measured with `bench/index_build.py --read-nice 0|19`: docs/throughput.md, "Index job").
    Never lowered: that needs privileges, and a caller who started us niced meant it.
    """
    if nice > 0 and os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, min(nice, 19))


def read_batch(batch: dict[str, np.ndarray], config: ReadConfig) -> dict[str, np.ndarray]:
    """Ray Data map_batches fn: {image_id, uri, shard} → + pixels, width, height, stage, error, read_seconds.

    A failed image keeps its row with `stage` ("read" or "decode") and `error` set and
    zero pixels, so the writer can account for every input of a shard. `read_seconds` is
    each row's share of this call's wall time (fetch + decode + resize).
    """
    lower_priority(config.nice)
    started = time.perf_counter()
    uris = [str(u) for u in batch["uri"]]
    n, size = len(uris), config.image_size
    pixels = np.zeros((n, size, size, 3), dtype=np.uint8)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    stage = np.full(n, "", dtype=object)
    error = np.full(n, "", dtype=object)
    for i, data in enumerate(fetch_many(uris, config.storage_options, config.fetch_threads, config.max_bytes)):
        if isinstance(data, BaseException):
            stage[i], error[i] = "read", _error_text(data)
            continue
        try:
            pixels[i], width[i], height[i] = decode_image(data, size, max_image_pixels=config.max_image_pixels)
        except Exception as exc:  # PIL raises many types for bad files; each is one error row
            stage[i], error[i] = "decode", _error_text(exc)
    return {
        "image_id": np.asarray(batch["image_id"], dtype=object),
        "uri": np.asarray(uris, dtype=object),
        "shard": np.asarray(batch["shard"], dtype=np.int64),
        "pixels": pixels,
        "width": width,
        "height": height,
        "stage": stage,
        "error": error,
        READ_SECONDS: np.full(n, (time.perf_counter() - started) / max(n, 1)),
    }
