"""LoRA layers in and out of a UNet: peft wraps every Conv2d for a while, then the UNet is put back bit for bit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ADAPTER_NAME",
    "ModuleState",
    "PerImageLoRAConv2d",
    "fresh_lora",
    "inject_lora",
    "lora_state",
    "lora_targets",
    "refuse_if_adapted",
    "remove_lora",
    "replace_module",
]

# The adapter name peft files it under inside the UNet while it is applied.
ADAPTER_NAME = "adir"


def lora_targets(unet: nn.Module) -> list[str]:
    """Names of every nn.Conv2d of `unet`: the paper adapts all convolutions.

    Selected by type, not by a name pattern: `conv.*` would also catch diffusers'
    GroupNorm `conv_norm_out`, which peft refuses.
    """
    refuse_if_adapted(unet)
    names = [name for name, module in unet.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(unet).__name__} has no nn.Conv2d layer to adapt")
    return names


def refuse_if_adapted(unet: nn.Module) -> None:
    """Raise if `unet` already carries peft layers: a second adapter on top would train or apply the wrong weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if hasattr(unet, "peft_config") or any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
        raise RuntimeError(
            "prior.unet already carries a LoRA adapter (an `adapter.applied(prior)` block is open, or peft "
            "layers were injected elsewhere); exit that block before adapting or applying another adapter"
        )


def fresh_lora(
    unet: nn.Module, targets: Sequence[str], rank: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """peft's LoRA init (A ~ kaiming-uniform(a=sqrt 5), B = 0), drawn from `generator` instead of the global RNG.

    B = 0 makes the adapted UNet start exactly equal to the base.
    """
    state = {}
    for name in targets:
        conv = unet.get_submodule(name)
        if conv.out_channels % conv.groups or rank % conv.groups:
            raise ValueError(f"conv {name!r} has groups={conv.groups}; peft needs lora_rank ({rank}) divisible by it")
        kernel_h, kernel_w = conv.kernel_size
        bound = 1.0 / math.sqrt(conv.in_channels * kernel_h * kernel_w)
        a = torch.rand((rank, conv.in_channels, kernel_h, kernel_w), generator=generator, device=generator.device)
        state[f"{name}.lora_A.weight"] = ((a * 2 - 1) * bound).cpu()
        state[f"{name}.lora_B.weight"] = torch.zeros(conv.out_channels, rank // conv.groups, 1, 1)
    return state


@dataclass
class ModuleState:
    """What injecting peft layers changes on a module tree besides the layers themselves."""

    requires_grad: dict[str, bool]
    training: dict[str, bool]

    @classmethod
    def capture(cls, unet: nn.Module) -> ModuleState:
        return cls(
            {name: p.requires_grad for name, p in unet.named_parameters()},
            {name: m.training for name, m in unet.named_modules()},
        )

    def restore(self, unet: nn.Module) -> None:
        for name, p in unet.named_parameters():
            p.requires_grad_(self.requires_grad[name])
        for name, m in unet.named_modules():
            m.training = self.training[name]


def inject_lora(
    unet: nn.Module, targets: Sequence[str], rank: int, alpha: float, state: dict[str, torch.Tensor]
) -> dict[str, nn.Module]:
    """Wrap each target conv in a peft LoRA layer holding `state`; returns the layers by name."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    device = next(unet.parameters()).device
    lora_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
    # low_cpu_mem_usage: the layers are created on the meta device and then take our
    # tensors, so peft never draws from the global RNG.
    inject_adapter_in_model(lora_config, unet, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True)
    loaded = set_peft_model_state_dict(
        unet,
        {k: v.to(device=device, dtype=torch.float32, copy=True) for k, v in state.items()},
        adapter_name=ADAPTER_NAME,
        low_cpu_mem_usage=True,
    )
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    unexpected = [k for k in loaded.unexpected_keys if "lora_" in k]
    layers = {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer)}
    if missing or unexpected or set(layers) != set(targets):
        raise ValueError(
            f"LoRA weights do not fit this UNet: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"{len(layers)} layers wrapped for {len(targets)} targets"
        )
    for layer in layers.values():
        # peft casts adapters to the base dtype; keep them fp32 so fp16 UNets train stably.
        layer.lora_A[ADAPTER_NAME].float()
        layer.lora_B[ADAPTER_NAME].float()
    return layers


def remove_lora(unet: nn.Module) -> None:
    """Put every wrapped base layer back in its place and drop peft's bookkeeping attribute."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, module.get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config


def lora_state(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The LoRA weights of `layers` under peft's keys, as CPU fp32 copies that outlive the layers."""
    state = {}
    for name, layer in layers.items():
        state[f"{name}.lora_A.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach().to("cpu", torch.float32).clone()
        state[f"{name}.lora_B.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach().to("cpu", torch.float32).clone()
    return state


# ------------------------------------------------------------------ one LoRA per image of a batch
class PerImageLoRAConv2d(nn.Module):
    """A frozen Conv2d plus G LoRAs (peft's conv LoRA: A a conv of the base's kernel, B a 1x1), one per batch group.

    The input is G equal groups of images, group-major; group g gets `base(x) + alpha/r B_g(A_g(x))`.
    The frozen base convolution runs once over all G groups: that is the batching.
    """

    def __init__(self, base: nn.Conv2d, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float):
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError(
                f"batched LoRA supports plain convolutions; got groups={base.groups}, {base.padding_mode}"
            )
        self.base = base
        # In child containers, registered after `base`: the UNet's first parameter stays a base weight
        # (priors read their dtype from it), and the names are those of the adapter file's keys.
        self.lora_A = nn.ParameterDict({"weight": nn.Parameter(lora_a)})  # (G, r, C_in, kh, kw)
        self.lora_B = nn.ParameterDict({"weight": nn.Parameter(lora_b)})  # (G, C_out, r, 1, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        # One low-rank pair per group, in a loop: on the CPU this beat a single grouped
        # convolution (groups=G) by 1.4x at G = 4 (96 channels, 32 px) with the same bits, and
        # each group's update is then computed exactly as it is for G = 1.
        lora_a, lora_b = self.lora_A["weight"], self.lora_B["weight"]
        chunks = x.to(lora_a.dtype).chunk(lora_a.shape[0])
        delta = torch.cat(
            [
                F.conv2d(F.conv2d(chunk, a, None, self.base.stride, self.base.padding, self.base.dilation), b)
                for chunk, a, b in zip(chunks, lora_a, lora_b)
            ]
        )
        return out + (self.scale * delta).to(out.dtype)


def replace_module(unet: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where the submodule `name` of `unet` is."""
    parent_name, _, child = name.rpartition(".")
    setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module)
