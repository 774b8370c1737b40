"""A trained LoRA for one prior, the settings that made it, and its file: diffusers' LoRA safetensors format."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.lora import ModuleState, inject_lora, refuse_if_adapted, remove_lora

__all__ = ["WEIGHT_NAME", "Adapter"]

# Key prefix of the UNet's entries in a diffusers pipeline LoRA file (`unet.<module>.lora_A.weight`).
PREFIX = "unet"
# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY: the LoraConfig kwargs, JSON, keys prefixed like the weights.
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
ADIR_METADATA_KEY = "adir_adapter"
# diffusers' default LoRA file name, for callers who save into a folder that diffusers will search.
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_FORMAT_VERSION = 1
# Our metadata's record of the weights' sha256 (`tensors_digest`): a file whose weights were edited after
# it was written no longer matches it. Files from before it was recorded have none (see from_bytes).
CHECKSUM_KEY = "tensors_sha256"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# ------------------------------------------------------------------ the adapter
@dataclass(eq=False)
class Adapter:
    """A trained LoRA for one prior: weights (peft keys, CPU fp32), targets, its configs and loss curve.

    The saved file is a diffusers pipeline LoRA file for the `unet` component. A diffusers
    model with PeftAdapterMixin loads it with
    `model.load_lora_adapter(path, prefix="unet", use_safetensors=True)`; without
    `use_safetensors=True` diffusers reads the tensors but skips the metadata and takes
    lora_alpha = r, which doubles the LoRA's effect at the default rank 16, alpha 8.
    """

    state_dict: dict[str, torch.Tensor]
    targets: tuple[str, ...]
    config: AdaptConfig
    prior_config: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    # Where it came from, for a cached adapter: its key, its neighbours, the adapter it started from.
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    @contextlib.contextmanager
    def applied(self, prior) -> Iterator[Any]:
        """Run `prior` with this LoRA inside the block; on exit the UNet is exactly as it was."""
        unet = prior.unet
        refuse_if_adapted(unet)
        for name in self.targets:
            try:
                module = unet.get_submodule(name)
            except AttributeError:
                module = None
            a, b = self.state_dict[f"{name}.lora_A.weight"], self.state_dict[f"{name}.lora_B.weight"]
            if (
                not isinstance(module, nn.Conv2d)
                or a.shape[1] != module.in_channels
                or tuple(a.shape[2:]) != tuple(module.kernel_size)
                or b.shape[0] != module.out_channels
            ):
                raise ValueError(
                    f"this adapter was trained on another UNet (prior config {self.prior_config}): "
                    f"layer {name!r} of this prior is {module!r}, not a Conv2d that fits the LoRA weights "
                    f"{tuple(a.shape)} / {tuple(b.shape)}"
                )
        snapshot = ModuleState.capture(unet)
        try:
            layers = inject_lora(unet, self.targets, self.config.lora_rank, self.config.lora_alpha, self.state_dict)
            for layer in layers.values():
                for p in layer.parameters():
                    p.requires_grad_(False)
            yield prior
        finally:
            remove_lora(unet)
            snapshot.restore(unet)

    # ---------------------------------------------------------- safetensors
    def to_bytes(self) -> bytes:
        """The safetensors file: `unet.`-prefixed peft keys and diffusers' LoRA metadata, plus ours."""
        from safetensors.torch import save

        lora_kwargs = {
            "r": self.config.lora_rank,
            "lora_alpha": self.config.lora_alpha,
            "target_modules": list(self.targets),
            "lora_dropout": 0.0,
            "bias": "none",
        }
        metadata = {
            "format": "pt",
            LORA_ADAPTER_METADATA_KEY: json.dumps(
                {f"{PREFIX}.{k}": v for k, v in lora_kwargs.items()}, indent=2, sort_keys=True
            ),
            ADIR_METADATA_KEY: json.dumps(
                {
                    "version": _FORMAT_VERSION,
                    "adapt_config": self.config.to_dict(),
                    "prior_config": self.prior_config,
                    "losses": list(self.losses),
                    "provenance": self.provenance,
                },
                default=str,
            ),
        }
        tensors = {f"{PREFIX}.{k}": v.contiguous() for k, v in self.state_dict.items()}
        ours = json.loads(metadata[ADIR_METADATA_KEY])
        metadata[ADIR_METADATA_KEY] = json.dumps({**ours, CHECKSUM_KEY: tensors_digest(tensors)}, default=str)
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>", *, require_checksum: bool = False) -> Adapter:
        """Parse and check a file of `to_bytes`; ValueError for anything that is not a usable adapter.

        Usable: our metadata whole, weights matching their recorded checksum, every weight finite.
        require_checksum: refuse a file with no checksum (a cache entry must have one; a file an
        older version saved is still read by `load`).
        """
        from safetensors.torch import load

        try:
            header_len = struct.unpack("<Q", data[:8])[0]
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
            tensors = load(data)
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{source} is not a readable safetensors file: {err}") from err
        if ADIR_METADATA_KEY not in metadata or LORA_ADAPTER_METADATA_KEY not in metadata:
            raise ValueError(
                f"{source} has no {ADIR_METADATA_KEY!r}/{LORA_ADAPTER_METADATA_KEY!r} metadata: it was not written "
                "by Adapter.save; adapt again or pass a file that Adapter.save wrote"
            )
        try:
            ours, lora = _read_metadata(metadata)
            config = AdaptConfig.from_dict(ours["adapt_config"])
            targets = tuple(lora["target_modules"])
            prior_config, losses = ours["prior_config"], [float(x) for x in ours["losses"]]
        except (KeyError, TypeError, ValueError) as exc:  # a key cut or mistyped: not our file as written
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{source}: its adapter metadata is incomplete or malformed ({what})") from None
        if ours.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{source} is adapter format version {ours.get('version')}; this code reads {_FORMAT_VERSION}"
            )
        if lora.get("r") != config.lora_rank or lora.get("lora_alpha") != config.lora_alpha:
            raise ValueError(f"{source}: LoRA metadata (r, alpha) disagrees with its adapt_config {config}")
        _check_weights(tensors, ours.get(CHECKSUM_KEY), source, require_checksum)
        state = {}
        for key, value in tensors.items():
            if not key.startswith(f"{PREFIX}.") or not key.endswith((".lora_A.weight", ".lora_B.weight")):
                raise ValueError(
                    f"{source}: unexpected key {key!r}; expected '{PREFIX}.<module>.lora_A|lora_B.weight'"
                )
            state[key.removeprefix(f"{PREFIX}.")] = value.to(torch.float32)
        expected = {f"{t}.lora_{ab}.weight" for t in targets for ab in ("A", "B")}
        if set(state) != expected:
            raise ValueError(
                f"{source}: weights do not match target_modules (missing {sorted(expected - set(state))[:3]})"
            )
        provenance = ours.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise ValueError(f"{source}: its provenance metadata is not a mapping")
        return cls(state, targets, config, prior_config, losses, provenance)

    def save(self, path: str) -> None:
        """Write a local .safetensors file (remote storage: write `to_bytes()` through fsspec)."""
        if not str(path).endswith(".safetensors"):
            raise ValueError(f"adapter path {path!r} must end in .safetensors (e.g. .../{WEIGHT_NAME})")
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> Adapter:
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), source=str(path))


def _read_metadata(metadata: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our metadata, the LoRA kwargs without their prefix) of a file's header; ValueError if either is not a mapping."""
    ours = json.loads(metadata[ADIR_METADATA_KEY])
    lora = json.loads(metadata[LORA_ADAPTER_METADATA_KEY])
    if not isinstance(ours, dict) or not isinstance(lora, dict):
        raise ValueError("metadata entries must be JSON objects")
    return ours, {k.removeprefix(f"{PREFIX}."): v for k, v in lora.items()}


def _check_weights(tensors: dict[str, torch.Tensor], recorded: Any, source: str, require_checksum: bool) -> None:
    """Refuse weights edited since they were written (checksum), or that hold NaN/inf (they would poison sampling)."""
    if recorded is None and require_checksum:
        raise ValueError(f"{source}: its metadata records no checksum of its weights ({CHECKSUM_KEY})")
    if recorded is not None and recorded != tensors_digest(tensors):
        raise ValueError(
            f"{source}: its weights do not match the checksum in its metadata (edited after it was written)"
        )
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{source}: weights {bad[:2]} hold NaN or infinite values")
