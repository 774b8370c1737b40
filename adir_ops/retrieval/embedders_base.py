"""What every encoder shares: the Embedder interface and the one check of an image batch."""

from __future__ import annotations

import numpy as np
import torch


class Embedder:
    """What retrieval needs from an encoder.

    `name` is the full spec string ("offline-content", "openclip:ViT-B-32:laion2b_s34b_b79k"):
    an index records it with `dim` and refuses queries from any other encoder.
    `image_size` is the square size the encoder works from; callers may pre-resize to it
    (the corpus reader does, to move less data), but any H, W is accepted.
    """

    name: str
    dim: int
    image_size: int

    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        """(n, C, H, W) floats in [0, 1], C in {1, 3} -> float32 (n, dim), rows of unit L2 norm
        (offline-content: norm < 1 for gray images, by design; its docstring says why)."""
        raise NotImplementedError

    def embed_text(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError(
            f"embedder {self.name!r} has no text encoder; use an 'openclip:<model>[:<pretrained>]' embedder for text queries"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, image_size={self.image_size})"


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a batch and return it as float (n, 3, H, W) in [0, 1]; gray is replicated."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a torch float tensor (n, C, H, W) in [0, 1]; got {type(images).__name__} "
            "(convert numpy HWC uint8 with torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255)"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, C, H, W) with C in {{1, 3}}; got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floats in [0, 1]; got dtype {images.dtype} (divide uint8 by 255)")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        # Noisy observations (y = Ax + e) legitimately leave [0, 1] by a few sigma; a [-1, 1]
        # or [0, 255] image does not belong here and would embed as garbage.
        if lo < -0.5 or hi > 1.5:
            raise ValueError(
                f"images must be in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                "(map a [-1, 1] prior image with (x + 1) / 2, a [0, 255] one with x / 255)"
            )
    images = images.float().clamp(0.0, 1.0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images
