"""Generated image corpora for the index_builder tests: ordinary, unusual-but-valid and invalid files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A distinct smooth colour picture (random 3x3 colour grid, bicubic-upsampled, plus a tilted ramp).

    Smooth on purpose: the offline encoder looks at a blurred 32 px copy, so white noise
    pictures would all embed alike.
    """
    grid = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
    base = np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx / max(width, 1) + np.sin(angle) * yy / max(height, 1)) * rng.uniform(40, 90)
    return np.clip(base + ramp[..., None] - 30, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~100-byte PNG whose header declares a width x height RGB canvas (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def normal_images(n: int, seed: int = 0, size: tuple[int, int] = (40, 56)) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        f"img_{i:03d}.jpg": encode(Image.fromarray(smooth_image(rng, *size)), "JPEG", quality=95) for i in range(n)
    }


def unusual_images(seed: int = 1) -> dict[str, bytes]:
    """file name → bytes of images that are valid but unusual; each must be indexed."""
    rng = np.random.default_rng(seed)

    def pic(h=40, w=56):
        return Image.fromarray(smooth_image(rng, h, w))

    gray16 = (smooth_image(rng, 36, 48)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 56x40 file shows as 40x56
    palette = pic().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "cmyk.jpg": encode(pic().convert("CMYK"), "JPEG", quality=95),
        "sixteen bit.png": encode(Image.fromarray(gray16), "PNG"),
        "palette transparent.png": encode(palette, "PNG", transparency=0),
        "rgba.png": encode(pic().convert("RGBA"), "PNG"),
        "gray.jpg": encode(pic().convert("L"), "JPEG", quality=95),
        "one pixel.png": encode(Image.new("RGB", (1, 1), (200, 40, 90)), "PNG"),
        "exif rotated.jpg": encode(pic(40, 56), "JPEG", quality=95, exif=exif.tobytes()),
        "picture.webp": encode(pic(), "WEBP", quality=90),
        "café ñandú 日本.jpg": encode(pic(), "JPEG", quality=95),
    }


def invalid_images(seed: int = 2) -> dict[str, tuple[bytes, str]]:
    """file name → (bytes, the stage its error row must name)."""
    rng = np.random.default_rng(seed)
    jpeg = encode(Image.fromarray(smooth_image(rng, 200, 300)), "JPEG", quality=95)
    return {
        "corrupt.jpg": (rng.integers(0, 256, 700, dtype=np.uint8).tobytes(), "decode"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "decode"),
        "empty.jpg": (b"", "decode"),
        "page.jpg": (b"<!doctype html><html><head><title>404</title></head><body>Not found</body></html>", "decode"),
        "bomb.png": (bomb_png(), "decode"),
    }


def stem(name: str) -> str:
    return name.rsplit(".", 1)[0]
