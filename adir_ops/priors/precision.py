"""The precision a pixel prior's network runs in: the job's `--precision`, resolved on the actor's own device.

bf16 autocast keeps float32's range with 8 bits of mantissa: the network's convolutions run in bf16,
the sampler's arithmetic and the LoRA's weights and Adam state stay float32. Where the hardware
multiplies bf16 natively it halves the cost of a forward: on CUDA, and on CPUs with AVX512-BF16 or AMX
(oneDNN's bf16 convolutions; measured 2.1x on this machine's EPYC for FFDNet, docs/full-size.md, at
a PSNR cost of about 0.01 dB). Elsewhere bf16 is emulated and slower, so 'auto' keeps float32 there.
'fp32' is the bit-reproducible choice: the same numbers on any CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_PRECISION = "auto"
PRECISION_HELP = (
    "the prior network's arithmetic: auto (default: bf16 autocast where the device multiplies bf16 natively, CUDA "
    "and AVX512-BF16/AMX CPUs, about 2x faster there for ~0.01 dB; else fp32), fp32 (the same numbers on any "
    "machine) or bf16; rows record which ran"
)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 in hardware (CUDA; a CPU with AVX512-BF16 or AMX tiles)."""
    import torch

    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the prior's network to on `device` (None: float32) for a `--precision` value."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return None
    return torch.bfloat16


def set_precision(prior, precision: str = DEFAULT_PRECISION):
    """`prior` (a DiffusionPrior or DenoiserPrior) set to run its network in `precision` on the device it is on now.

    The job's actors, `ADIRPipeline.from_spec` and the example all go through here, so a notebook
    gets the job's pixels on the same machine. Move the prior to its device first.
    """
    device = next(iter(prior.parameters())).device
    prior.autocast_dtype = autocast_dtype(precision, device)
    return prior


def precision_name(dtype: torch.dtype | None) -> str:
    """What a result row records: 'bf16' or 'fp32'."""
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat", "bf")
