"""The weight-free encoders: `offline-content` (what an image is made of) and `offline-lowpass` (what survives a degradation)."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

from adir_ops.retrieval.embedders_base import Embedder, check_images

# BT.601 luma, the weights RGB->gray colorization operators use (deepinv's Decolorize too).
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _unit(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(eps)


def _orientation_histograms(lum: torch.Tensor, cells: int, bins: int) -> torch.Tensor:
    """Magnitude-weighted, softly binned unsigned gradient orientations pooled on a cells x cells grid."""
    padded = F.pad(lum, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    magnitude = torch.sqrt(gx**2 + gy**2 + 1e-12)
    # Unsigned orientation: a dark-to-bright edge and its mirror vote together.
    theta = torch.atan2(gy, gx) % math.pi
    centres = (torch.arange(bins, dtype=lum.dtype, device=lum.device) + 0.5) * (math.pi / bins)
    distance = (theta - centres.view(1, bins, 1, 1)).abs()
    distance = torch.minimum(distance, math.pi - distance)
    votes = (1 - distance / (math.pi / bins)).clamp_min(0) * magnitude
    hist = F.adaptive_avg_pool2d(votes, cells).flatten(1)
    # sqrt (Hellinger) so one strong edge cannot drown the texture statistics.
    return _unit(hist.sqrt())


def _working_copy(images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(small RGB, its luminance): what survives ADIR's degradations, for the weight-free encoders.

    A size x size area-like downsample (antialias=True averages for any, non-integer, factor)
    blurred with sigma 1 px: what x8 downsampling of a 256 px image and a 5x5 blur leave, with
    sensor noise averaged away; luminance with the BT.601 weights the colorization operator uses.
    """
    small = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    small = _gaussian_blur(small, sigma=1.0)
    luma = torch.tensor(_LUMA, dtype=small.dtype, device=small.device).view(1, 3, 1, 1)
    return small, (small * luma).sum(1, keepdim=True)


class _OfflineEmbedder(Embedder):
    """What the weight-free encoders share: input checks, the empty batch, no autograd, float32 rows."""

    image_size = 64
    work_size = 32

    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        images = check_images(images)
        if images.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.no_grad():
            return self._features(images).cpu().numpy().astype(np.float32)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class OfflineLowpassEmbedder(_OfflineEmbedder):
    """A weight-free, deterministic image descriptor built to survive ADIR's degradations.

    Why: the paper retrieves neighbours with CLIP; without downloadable weights we still need
    an encoder whose nearest neighbour of a degraded query y (SR x4/x8 low-res image, 5x5 blur
    plus noise, gray image, pixel-masked image) is the clean image it came from. So it only
    looks at what those degradations leave intact:

    - everything is computed from a 32x32 area-downsampled, Gaussian-blurred (sigma 1 px)
      copy: what survives x8 downsampling of a 256 px image and a 5x5 blur; averaging 64+
      pixels also removes sensor noise (sigma 10/255 -> ~1/255);
    - structure is read from luminance only, so a gray query matches its colour original;
    - layout: an 8x8 luminance thumbnail with mean removed and unit norm (contrast and
      brightness invariant, so the uniform dimming of a random-pixel mask cancels);
    - texture/edges: unsigned gradient-orientation histograms (8 bins, Hellinger-normalised)
      on a 4x4 grid at 32 px and a 2x2 grid at 16 px;
    - colour: 4x4 grid of mean chroma (Cb, Cr), softly normalised and weighted low
      (0.3 vs 1 for luminance blocks). It is exactly zero for gray images, so for a gray
      query it changes every corpus score by the same factor up to at most 1/sqrt(1 + 0.3^2)
      (about 4%): colour helps colour queries without deciding gray ones.

    Each block is unit-normalised then weighted, and the concatenation (dim 256) is
    L2-normalised, so inner product = cosine. Every step is per image: an embedding does
    not depend on the rest of the batch. Inpainting with a large contiguous hole is not
    invariant by construction (the hole is layout); fill it before embedding if it matters.
    """

    name = "offline-lowpass"
    bins = 8
    chroma_softness = 0.28  # chroma vector norm at which the block reaches 1/sqrt(2)
    weights = MappingProxyType({"layout": 1.0, "edges32": 1.0, "edges16": 0.6, "chroma": 0.3})

    def __init__(self):
        self.dim = 64 + self.bins * 16 + self.bins * 4 + 32

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        small, lum = _working_copy(images, self.work_size)
        chroma = torch.cat([small[:, 2:3] - lum, small[:, 0:1] - lum], dim=1)  # Cb, Cr (unscaled)

        layout = F.adaptive_avg_pool2d(lum, 8).flatten(1)
        layout = _unit(layout - layout.mean(dim=1, keepdim=True))
        edges32 = _orientation_histograms(lum, cells=4, bins=self.bins)
        edges16 = _orientation_histograms(F.avg_pool2d(lum, 2), cells=2, bins=self.bins)
        colour = F.adaptive_avg_pool2d(chroma, 4).flatten(1)
        colour = colour / torch.sqrt((colour**2).sum(1, keepdim=True) + self.chroma_softness**2)

        w = self.weights
        blocks = [w["layout"] * layout, w["edges32"] * edges32, w["edges16"] * edges16, w["chroma"] * colour]
        return _unit(torch.cat(blocks, dim=1))


def _bin_weights(values: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    """(n, N) values -> (n, N, bins): each value's linear-interpolation weights on `bins` bins over [low, high]."""
    position = (values - low) / (high - low) * bins - 0.5
    centres = torch.arange(bins, dtype=values.dtype, device=values.device)
    return (1 - (position[..., None] - centres).abs()).clamp_min(0)


class OfflineContentEmbedder(_OfflineEmbedder):
    """A weight-free descriptor of what an image is made of (colours, tones, textures), not where things are.

    Why a second one: ADIR adapts the prior on images that share the query's *content*
    (paper Section 3: CLIP neighbours), not on copies of it. `offline-lowpass` is dominated by
    an 8x8 layout thumbnail, so it finds the clean original of a degraded image but is close
    to chance at finding other views of the same scene; this one finds them far more often
    (docs/retrieval.md, "Which encoder"). Its weights were chosen on validation queries,
    never on the held-out test images.

    From the same 32x32, sigma-1-blurred working copy as `offline-lowpass` (what survives x8
    downsampling, a 5x5 blur and sensor noise), all pooled over the whole image:
    - tones: a 12-bin soft histogram of luminance;
    - texture: unsigned gradient-orientation histograms at 32 and 16 px, and the gradient
      energy at three scales beside the contrast (how busy, and at which scale);
    - colour: a 6x6 soft joint histogram of (Cb, Cr) chroma.
    Histograms are square-rooted (Hellinger), each block unit-normalised and weighted; the
    luminance blocks together form one unit vector, the colour block another.

    Gray images carry no colour, so their colour block is zero and their rows have norm
    1 / sqrt(1 + 1.5^2) instead of 1. This is deliberate: with the index's inner product a
    gray query then ranks every corpus image by tones and texture alone, scoring a colour
    image and its gray copy the same, instead of preferring gray corpus images (which would
    teach a colorization prior to stay gray); a colour query prefers images of its colours.
    """

    name = "offline-content"
    tone_bins = 12
    orientation_bins = 8
    chroma_bins = 6
    # Mean |chroma| below this (2/255) is a gray image: JPEG leaves a little on gray photos.
    gray_chroma = 2 / 255
    weights = MappingProxyType({"tones": 1.0, "edges32": 0.5, "edges16": 0.3, "energy": 0.5, "colour": 1.5})

    def __init__(self):
        self.dim = self.tone_bins + 2 * self.orientation_bins + 4 + self.chroma_bins**2

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        small, lum = _working_copy(images, self.work_size)
        cb, cr = (small[:, 2] - lum[:, 0]).flatten(1), (small[:, 0] - lum[:, 0]).flatten(1)

        tones = _unit(_bin_weights(lum.flatten(1), 0.0, 1.0, self.tone_bins).mean(1).sqrt())
        edges32 = _orientation_histograms(lum, cells=1, bins=self.orientation_bins)
        edges16 = _orientation_histograms(F.avg_pool2d(lum, 2), cells=1, bins=self.orientation_bins)
        energy = _unit(
            torch.stack(
                [
                    _gradient_energy(lum),
                    _gradient_energy(F.avg_pool2d(lum, 2)),
                    _gradient_energy(F.avg_pool2d(lum, 4)),
                    lum.flatten(1).std(1),
                ],
                dim=1,
            )
        )
        w = self.weights
        structure = _unit(
            torch.cat([w["tones"] * tones, w["edges32"] * edges32, w["edges16"] * edges16, w["energy"] * energy], 1)
        )

        # Photo chroma stays well inside [-0.5, 0.5]; a value more than half a bin outside (pure
        # red: Cr = 0.70) gets no weight at all, so extreme saturation does not vote.
        bins = self.chroma_bins
        joint = torch.einsum("bni,bnj->bij", _bin_weights(cb, -0.5, 0.5, bins), _bin_weights(cr, -0.5, 0.5, bins))
        colour = _unit((joint.flatten(1) / cb.shape[1]).sqrt())
        gray = (cb.abs().mean(1) + cr.abs().mean(1)) / 2 < self.gray_chroma
        colour = torch.where(gray[:, None], torch.zeros_like(colour), colour)
        return torch.cat([structure, w["colour"] * colour], dim=1) / math.sqrt(1 + w["colour"] ** 2)


def _gradient_energy(lum: torch.Tensor) -> torch.Tensor:
    """Root-mean-square finite difference of (n, 1, H, W) luminance, per image."""
    gx = lum[..., :, 1:] - lum[..., :, :-1]
    gy = lum[..., 1:, :] - lum[..., :-1, :]
    return torch.sqrt(gx.pow(2).mean((1, 2, 3)) + gy.pow(2).mean((1, 2, 3)) + 1e-12)
