"""A trained LoRA for one prior, the settings that made it, and its file: diffusers' LoRA safetensors format."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adir_ops.adapt_config import AdaptConfig
from adir_ops.lora import ModuleState, inject_lora, refuse_if_adapted, remove_lora

__all__ = ["WEIGHT_NAME", "AdaptConfig", "Adapter"]

# Key prefix of the UNet's entries in a diffusers pipeline LoRA file (`unet.<module>.lora_A.weight`).
PREFIX = "unet"
# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY: the LoraConfig kwargs, JSON, keys prefixed like the weights.
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
ADIR_METADATA_KEY = "adir_adapter"
# diffusers' default LoRA file name, for callers who save into a folder that diffusers will search.
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_FORMAT_VERSION = 1


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
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Adapter:
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
        ours = json.loads(metadata[ADIR_METADATA_KEY])
        if ours.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{source} is adapter format version {ours.get('version')}; this code reads {_FORMAT_VERSION}"
            )
        lora = {k.removeprefix(f"{PREFIX}."): v for k, v in json.loads(metadata[LORA_ADAPTER_METADATA_KEY]).items()}
        config = AdaptConfig.from_dict(ours["adapt_config"])
        if lora.get("r") != config.lora_rank or lora.get("lora_alpha") != config.lora_alpha:
            raise ValueError(f"{source}: LoRA metadata (r, alpha) disagrees with its adapt_config {config}")
        targets = tuple(lora["target_modules"])
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
        return cls(state, targets, config, ours["prior_config"], [float(x) for x in ours["losses"]], provenance)

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
