"""OpenAI's Guided Diffusion UNet (the paper's 256x256 unconditional prior), built from deepinv's blocks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# OpenAI's 256x256_diffusion_uncond.pt (the paper's Guided Diffusion prior): the flags of its
# README, which are also deepinv's DiffUNet(large_model=True).
GUIDED_DIFFUSION_256_UNCOND: dict[str, Any] = {
    "image_size": 256,
    "in_channels": 3,
    "model_channels": 256,
    "num_res_blocks": 2,
    "channel_mult": (1, 1, 2, 2, 4, 4),
    "attention_resolutions": (32, 16, 8),
    "num_head_channels": 64,
    "learn_sigma": True,
}


def guided_diffusion_unet(
    *,
    image_size: int = 256,
    in_channels: int = 3,
    model_channels: int = 256,
    num_res_blocks: int = 2,
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4),
    attention_resolutions: tuple[int, ...] = (32, 16, 8),
    num_head_channels: int = 64,
    learn_sigma: bool = True,
) -> nn.Module:
    """deepinv's `DiffUNet` (OpenAI's ADM UNet) with its architecture as arguments.

    DiffUNet's constructor hard-codes two sizes (128 or 256 channels); this builds an
    instance of the same class from the same blocks in the same order, so the defaults take
    OpenAI's 256x256_diffusion_uncond state dict and tests can build a small one.
    Dropout is 0, as in OpenAI's sampling flags. `attention_resolutions` are feature-map
    sizes (OpenAI's convention); GroupNorm32 needs multiples of 32 channels.
    """
    from deepinv.models.base import Denoiser
    from deepinv.models.diffunet import (
        AttentionBlock,
        DiffUNet,
        ResBlock,
        TimestepEmbedSequential,
        normalization,
        zero_module,
    )

    if model_channels % 32:
        raise ValueError(f"model_channels must be a multiple of 32 (GroupNorm32 uses 32 groups); got {model_channels}")
    net = DiffUNet.__new__(DiffUNet)
    Denoiser.__init__(net)
    out_channels = 2 * in_channels if learn_sigma else in_channels
    attention_ds = tuple(image_size // int(r) for r in attention_resolutions)
    # The attributes DiffUNet's forward reads.
    net.img_size, net.in_channels, net.out_channels = image_size, in_channels, out_channels
    net.model_channels, net.num_res_blocks, net.channel_mult = model_channels, num_res_blocks, tuple(channel_mult)
    net.attention_resolutions, net.dropout, net.conv_resample = attention_ds, 0.0, True
    net.num_classes, net.use_checkpoint, net.dtype = None, False, torch.float32
    net.num_heads, net.num_head_channels, net.num_heads_upsample = 4, num_head_channels, 4
    emb_dim = model_channels * 4
    net.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def res(ch_in: int, ch_out: int, **updown: bool) -> nn.Module:
        return ResBlock(ch_in, emb_dim, 0.0, out_channels=ch_out, dims=2, use_scale_shift_norm=True, **updown)

    def attn(ch: int) -> nn.Module:
        return AttentionBlock(ch, num_heads=4, num_head_channels=num_head_channels)

    ch = model_channels * channel_mult[0]
    net.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_channels, ds = [ch], 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [res(ch, model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_ds:
                layers.append(attn(ch))
            net.input_blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            net.input_blocks.append(TimestepEmbedSequential(res(ch, ch, down=True)))
            skip_channels.append(ch)
            ds *= 2
    net.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
    net.output_blocks = nn.ModuleList([])
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            layers = [res(ch + skip_channels.pop(), model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_ds:
                layers.append(attn(ch))
            if level and i == num_res_blocks:
                layers.append(res(ch, ch, up=True))
                ds //= 2
            net.output_blocks.append(TimestepEmbedSequential(*layers))
    head = zero_module(nn.Conv2d(model_channels * channel_mult[0], out_channels, 3, padding=1))
    net.out = nn.Sequential(normalization(ch), nn.SiLU(), head)
    # Used only by DiffUNet's noise-level mode; non-persistent so OpenAI checkpoints load strictly.
    sqrt_1m_abar, sqrt_abar = net.get_alpha_prod()[-2:]
    net.register_buffer("sqrt_1m_alphas_cumprod", sqrt_1m_abar, persistent=False)
    net.register_buffer("sqrt_alphas_cumprod", sqrt_abar, persistent=False)
    return net.eval()
