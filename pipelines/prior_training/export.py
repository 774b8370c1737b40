"""What a finished run leaves: the prior (optionally in float16), its loss curve, a sample sheet and a summary; and loading the committed one."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adir_ops.priors.diffusion import DiffusionPrior
from adir_ops.priors.weights import UNET64_DIR
from pipelines.prior_training.data import to_model_range
from pipelines.prior_training.trainer import Trainer

# The committed UNet prior (`--prior unet64`): inside the adir_ops package (adir_ops/priors/weights), so the wheel carries it.
UNET64 = Path(UNET64_DIR)
SUMMARY = "train_summary.json"


def plot_loss_curve(trainer: Trainer, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(trainer.losses)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(np.arange(1, len(losses) + 1), losses, color="0.8", lw=0.6, label="batch loss")
    window = min(100, len(losses))
    if window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(losses) + 1), smooth, color="C0", label=f"mean of {window} steps")
    if trainer.validation:
        v = np.asarray(trainer.validation)
        ax.plot(v[:, 0], v[:, 1], "o-", ms=3, color="C1", label="validation, raw weights")
        if trainer.ema is not None:
            ax.plot(v[:, 0], v[:, 2], "s-", ms=3, color="C2", label="validation, EMA weights")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("eps MSE")
    ax.set_title(
        f"default prior: {sum(p.numel() for p in trainer.unet.parameters()) / 1e6:.2f}M params, batch {trainer.config.batch_size}"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def grid(images: torch.Tensor, columns: int) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> one uint8 (rows*(H+2), columns*(W+2), 3) sheet with 2-pixel gaps."""
    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    sheet = np.full((rows * (h + 2), columns * (w + 2), 3), 255, dtype=np.uint8)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, im in enumerate(pixels):
        r, col = divmod(i, columns)
        sheet[r * (h + 2) : r * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = im
    return sheet


def write_sample_sheet(
    prior: DiffusionPrior, data: torch.Tensor, path: Path, *, num: int, steps: int, seed: int
) -> None:
    """Training patches (left) beside unconditional samples (right), both `num` images, one PNG."""
    from PIL import Image

    from adir_ops.rng import generator_for
    from adir_ops.sampling.chain import sample

    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:num]
    generators = [generator_for(seed, f"sample-{i}") for i in range(num)]
    samples = sample(
        prior, (num, prior.channels, prior.resolution, prior.resolution), steps=steps, generator=generators
    )
    columns = math.ceil(math.sqrt(num))
    left, right = grid(to_model_range(data[pick]), columns), grid(samples.cpu(), columns)
    gap = np.full((left.shape[0], 16, 3), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(path)


def _weights_to_fp16(path: Path) -> None:
    """Rewrite a safetensors file in float16: half the committed size; `from_diffusers` loads it back as float32."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def data_hash(data: torch.Tensor) -> str:
    """sha256 of the training patches as loaded (uint8, sorted paths): which data made a prior, checkable later."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(repr(tuple(data.shape)).encode())
    digest.update(data.contiguous().numpy().tobytes())
    return digest.hexdigest()


def export(
    trainer: Trainer, out: str | os.PathLike, *, data: torch.Tensor | None = None, command: str | None = None
) -> dict[str, Any]:
    """Write the prior, its loss curve, the sample sheet and a summary into `out`; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior = trainer.prior()
    prior.save_pretrained(str(out))
    if trainer.config.fp16_weights:
        _weights_to_fp16(out / "unet" / "diffusion_pytorch_model.safetensors")
    plot_loss_curve(trainer, out / "loss_curve.png")
    if data is not None and trainer.config.num_samples:
        write_sample_sheet(
            prior,
            data,
            out / "samples.png",
            num=trainer.config.num_samples,
            steps=trainer.config.sample_steps,
            seed=trainer.config.seed,
        )
    recent = trainer.losses[-100:]
    last_val = trainer.validation[-1] if trainer.validation else (trainer.step_count, float("nan"), float("nan"))
    summary = {
        "command": command,
        "config": trainer.config.to_dict(),
        "parameters": sum(p.numel() for p in trainer.unet.parameters()),
        "steps": trainer.step_count,
        "train_seconds": round(trainer.train_seconds, 1),
        "seconds_per_step": round(trainer.train_seconds / max(trainer.step_count, 1), 3),
        "final_loss_mean_last_100": sum(recent) / max(len(recent), 1),
        "validation_loss_raw": last_val[1],
        "validation_loss_ema": last_val[2],
        "weights": "ema" if trainer.ema is not None else "raw",
        "weights_dtype": "float16" if trainer.config.fp16_weights else "float32",
        "patches": None if data is None else len(data),
        "data_sha256": None if data is None else data_hash(data),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def load_unet64(path: str | os.PathLike = UNET64) -> DiffusionPrior:
    """The committed UNet prior (adir_ops/priors/weights/unet64 of this checkout), or another folder written by `export`."""
    if not (Path(path) / "unet" / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained prior in {path}; train one with: python -m pipelines.train_prior DATA/prior-train "
            f"--work WORK --out {path} (see adir_ops/priors/weights/unet64/COMMAND.md)"
        )
    return DiffusionPrior.from_diffusers(str(path))
