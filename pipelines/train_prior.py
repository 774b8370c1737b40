"""Train the embedded default prior: a small diffusers UNet2DModel DDPM (eps prediction, linear 1000-step schedule) on a folder of patches.

    python -m pipelines.train_prior DATA/prior-train --work runs/prior --out adir_ops/weights/default --max-minutes 40

`--work` holds `checkpoint.pt` (model, EMA, optimizer and generator state; loads with
`torch.load(weights_only=True)`), written every `--checkpoint-every` steps and when the run
stops. Rerunning the same command resumes from it and, on the same machine and thread count,
gives bit for bit the weights of an uninterrupted run: every draw (batch indices, flips,
timesteps, noise) comes from one torch.Generator whose state is checkpointed. The run stops
cleanly at `--max-steps` or after `--max-minutes` of this invocation, and then writes `--out`:
the prior (`unet/`, `scheduler/`: load with `DiffusionPrior.from_diffusers`), `loss_curve.png`,
`samples.png` (training patches beside unconditional samples) and `train_summary.json`.

Size, measured (64 px, batch 16, 1 thread, on 2 cores shared with other jobs at load 7-11):
UNet levels (16, 32, 64, 128) with 1 layer per block: 2.69M parameters, 1.89 s/step;
the same with 2 layers per block (the default): 3.88M, 2.06 s/step; (32, 64, 128, 128) with
1 layer: 4.33M, 3.24 s/step. With 2 threads the same models took 14-19 s/step on the loaded
machine (the threads of one op wait for each other), hence `--threads`. The default costs
4.2 GFLOP per image for forward + backward and is 7.8 MB in float16. 64 px is the issue's
floor; 128 px costs four times as much per step.

The weights saved are the EMA of the training weights (`--ema-decay`; 0 saves the raw
weights): at every checkpoint both are scored on one fixed validation batch (fixed patches,
timesteps and noise) so the choice is measured, and the scores are in the summary and curve.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adir_ops.priors import DiffusionPrior, linear_betas
from adir_ops.weights import DEFAULT_PRIOR_DIR

CHECKPOINT = "checkpoint.pt"
# The committed default prior: inside the adir_ops package (adir_ops/weights), so the wheel carries it.
DEFAULT_PRIOR = Path(DEFAULT_PRIOR_DIR)
SUMMARY = "train_summary.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Fields that define the model or its draws; a resumed run must not change them.
FIXED_ON_RESUME = ("resolution", "block_out_channels", "layers_per_block", "attention", "batch_size",
                   "learning_rate", "warmup_steps", "ema_decay", "seed", "num_train_timesteps", "validation_size")


@dataclass(frozen=True)
class TrainConfig:
    """Model size, optimisation and bookkeeping of one prior-training run."""

    resolution: int = 64
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 2
    attention: bool = True  # self-attention at the lowest-resolution level and in the middle block
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    max_steps: int = 100_000
    max_minutes: float | None = None
    ema_decay: float = 0.995
    checkpoint_every: int = 100
    seed: int = 0
    num_train_timesteps: int = 1000
    validation_size: int = 32
    num_samples: int = 16
    sample_steps: int = 100
    fp16_weights: bool = False

    def __post_init__(self) -> None:
        if self.resolution % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(f"resolution {self.resolution} must be divisible by 2^{len(self.block_out_channels) - 1} "
                             f"(one halving per level of block_out_channels {self.block_out_channels})")
        for name in ("batch_size", "max_steps", "checkpoint_every", "layers_per_block", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA); got {self.ema_decay}")
        if any(c % 8 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be multiples of 8 (GroupNorm of 8 groups); got {self.block_out_channels}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**values)


def build_unet(config: TrainConfig, seed: int):
    """The diffusers UNet2DModel of `config`, weights initialised from `seed`.

    torch's initialisers take no generator, so initialisation runs under a forked global RNG:
    seeded here, and the caller's global RNG state is left as it was.
    """
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(
            sample_size=config.resolution,
            in_channels=3,
            out_channels=3,
            layers_per_block=config.layers_per_block,
            block_out_channels=tuple(config.block_out_channels),
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=8,
            attention_head_dim=min(32, config.block_out_channels[-1]),
            add_attention=config.attention,  # the middle block's
        )


def load_patches(folder: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Every image under `folder` (sorted paths) as a uint8 (N, 3, R, R) tensor."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no .png/.jpg patches under {folder}; write them with: python -m pipelines.default_assets OUT (then use OUT/prior-train)")
    patches = []
    for p in paths:
        with Image.open(p) as im:
            if im.size != (resolution, resolution):
                raise ValueError(f"{p} is {im.size[0]}x{im.size[1]}; every training patch must be {resolution}x{resolution} "
                                 f"(pass --resolution {im.size[0]} if that is the prior's size)")
            patches.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()


def to_model_range(patches: torch.Tensor) -> torch.Tensor:
    return patches.float() / 127.5 - 1.0


def draw_batch(data: torch.Tensor, batch_size: int, num_timesteps: int, generator: torch.Generator):
    """Patch indices, horizontal flips, timesteps and noise, in this fixed order from `generator`."""
    idx = torch.randint(len(data), (batch_size,), generator=generator)
    flip = torch.rand(batch_size, generator=generator) < 0.5
    t = torch.randint(num_timesteps, (batch_size,), generator=generator)
    noise = torch.randn((batch_size, *data.shape[1:]), generator=generator)
    x0 = to_model_range(data[idx])
    # Photographs are mirror-symmetric in distribution; upside-down ones are not.
    x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
    return x0, t, noise


def diffusion_loss(unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM's simple loss: MSE between the noise and its prediction from x_t (Ho et al. eq. 14)."""
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    return F.mse_loss(unet(x_t, t).sample, noise)


def validation_batch(data: torch.Tensor, config: TrainConfig):
    """A fixed batch (patches, flips, evenly spaced timesteps, noise) from its own seed, the same every run."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    n = min(config.validation_size, len(data))
    idx = torch.randperm(len(data), generator=generator)[:n]
    t = torch.linspace(0, config.num_train_timesteps - 1, n).round().long()
    noise = torch.randn((n, *data.shape[1:]), generator=generator)
    return to_model_range(data[idx]), t, noise


@torch.no_grad()
def validation_loss(unet, batch, alphas_cumprod: torch.Tensor, chunk: int) -> float:
    x0, t, noise = batch
    total = 0.0
    for i in range(0, len(x0), chunk):
        sl = slice(i, i + chunk)
        total += float(diffusion_loss(unet, x0[sl], t[sl], noise[sl], alphas_cumprod)) * len(x0[sl])
    return total / len(x0)


class Trainer:
    """Model, EMA, optimizer, generator and history of one run; `step()` trains one batch."""

    def __init__(self, data: torch.Tensor, config: TrainConfig):
        self.data = data
        self.config = config
        self.unet = build_unet(config, config.seed).train()
        self.ema = build_unet(config, config.seed).eval() if config.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.load_state_dict(self.unet.state_dict())
            self.ema.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.alphas_cumprod = torch.cumprod(1.0 - linear_betas(config.num_train_timesteps), 0).float()
        self.step_count = 0
        self.losses: list[float] = []
        self.validation: list[tuple[int, float, float]] = []  # (step, raw, ema)
        self.train_seconds = 0.0

    def learning_rate(self) -> float:
        return self.config.learning_rate * min(1.0, (self.step_count + 1) / self.config.warmup_steps)

    def step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        x0, t, noise = draw_batch(self.data, self.config.batch_size, self.config.num_train_timesteps, self.generator)
        loss = diffusion_loss(self.unet, x0, t, noise, self.alphas_cumprod)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.step_count += 1
        if self.ema is not None:
            # diffusers' EMAModel warm-up: early on the average must not remember the random init.
            decay = min(self.config.ema_decay, (1 + self.step_count) / (10 + self.step_count))
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.unet.parameters()):
                    e.lerp_(p, 1.0 - decay)
        self.losses.append(loss.detach().item())
        return self.losses[-1]

    def validate(self, batch) -> tuple[float, float]:
        self.unet.eval()
        raw = validation_loss(self.unet, batch, self.alphas_cumprod, self.config.batch_size)
        self.unet.train()
        ema = validation_loss(self.ema, batch, self.alphas_cumprod, self.config.batch_size) if self.ema is not None else raw
        self.validation.append((self.step_count, raw, ema))
        return raw, ema

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "unet": self.unet.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "validation": torch.tensor(self.validation, dtype=torch.float64).reshape(-1, 3),
            "train_seconds": self.train_seconds,
            "config": json.dumps(self.config.to_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])
        self.losses = state["losses"].tolist()
        self.validation = [tuple(row) for row in state["validation"].tolist()]
        self.train_seconds = float(state["train_seconds"])

    def save_checkpoint(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # a run killed mid-write keeps the previous checkpoint

    def prior(self) -> DiffusionPrior:
        unet = self.ema if self.ema is not None else self.unet
        return DiffusionPrior(unet.eval(), linear_betas(self.config.num_train_timesteps), resolution=self.config.resolution,
                              config={"source": "pipelines.train_prior", "step": self.step_count})


def resume_or_start(data: torch.Tensor, config: TrainConfig, work: Path) -> Trainer:
    trainer = Trainer(data, config)
    path = work / CHECKPOINT
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_dict(json.loads(state["config"]))
        changed = [k for k in FIXED_ON_RESUME if getattr(saved, k) != getattr(config, k)]
        if changed:
            raise ValueError(f"{path} was trained with other settings ({', '.join(f'{k}={getattr(saved, k)!r}' for k in changed)}); "
                             f"rerun with those, or use another --work folder to start afresh")
        trainer.load_state_dict(state)
    return trainer


def train(data_dir: str | os.PathLike, work: str | os.PathLike, config: TrainConfig, *, progress: bool = True) -> Trainer:
    """Train (or resume) until `max_steps` or `max_minutes`, checkpointing on the way and at the end."""
    from tqdm import tqdm

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_patches(data_dir, config.resolution)
    trainer = resume_or_start(data, config, work)
    val_batch = validation_batch(data, config)
    start = time.monotonic()
    deadline = None if config.max_minutes is None else start + 60.0 * config.max_minutes
    bar = tqdm(total=config.max_steps, initial=trainer.step_count, disable=not progress, desc="train prior", unit="step", file=sys.stderr)
    last = time.monotonic()
    try:
        while trainer.step_count < config.max_steps and (deadline is None or time.monotonic() < deadline):
            trainer.step()
            now = time.monotonic()
            trainer.train_seconds += now - last
            last = now
            bar.update(1)
            if trainer.step_count % 10 == 0:
                recent = trainer.losses[-100:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", s_per_step=f"{trainer.train_seconds / max(trainer.step_count, 1):.2f}")
            if trainer.step_count % config.checkpoint_every == 0:
                trainer.validate(val_batch)
                trainer.save_checkpoint(work / CHECKPOINT)
                last = time.monotonic()  # bookkeeping is not training time
    finally:
        bar.close()
    if not trainer.validation or trainer.validation[-1][0] != trainer.step_count:
        trainer.validate(val_batch)
    trainer.save_checkpoint(work / CHECKPOINT)
    return trainer


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
    ax.set_title(f"default prior: {sum(p.numel() for p in trainer.unet.parameters()) / 1e6:.2f}M params, batch {trainer.config.batch_size}")
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


def write_sample_sheet(prior: DiffusionPrior, data: torch.Tensor, path: Path, *, num: int, steps: int, seed: int) -> None:
    """Training patches (left) beside unconditional samples (right), both `num` images, one PNG."""
    from PIL import Image

    from adir_ops.rng import generator_for
    from adir_ops.sampling import sample

    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:num]
    generators = [generator_for(seed, f"sample-{i}") for i in range(num)]
    samples = sample(prior, (num, prior.channels, prior.resolution, prior.resolution), steps=steps, generator=generators)
    columns = math.ceil(math.sqrt(num))
    left, right = grid(to_model_range(data[pick]), columns), grid(samples.cpu(), columns)
    gap = np.full((left.shape[0], 16, 3), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(path)


def _weights_to_fp16(path: Path) -> None:
    """Rewrite a safetensors file in float16: half the committed size; `from_diffusers` loads it back as float32."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def export(trainer: Trainer, out: str | os.PathLike, *, data: torch.Tensor | None = None, command: str | None = None) -> dict[str, Any]:
    """Write the prior, its loss curve, the sample sheet and a summary into `out`; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior = trainer.prior()
    prior.save_pretrained(str(out))
    if trainer.config.fp16_weights:
        _weights_to_fp16(out / "unet" / "diffusion_pytorch_model.safetensors")
    plot_loss_curve(trainer, out / "loss_curve.png")
    if data is not None and trainer.config.num_samples:
        write_sample_sheet(prior, data, out / "samples.png", num=trainer.config.num_samples,
                           steps=trainer.config.sample_steps, seed=trainer.config.seed)
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
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def load_default_prior(path: str | os.PathLike = DEFAULT_PRIOR) -> DiffusionPrior:
    """The committed default prior (adir_ops/weights/default of this checkout), or another folder written by `export`."""
    if not (Path(path) / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"no trained prior in {path}; train one with: python -m pipelines.train_prior DATA/prior-train "
                                f"--work WORK --out {path} (see adir_ops/weights/default/COMMAND.md)")
    return DiffusionPrior.from_diffusers(str(path))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.train_prior", description=__doc__.splitlines()[0])
    p.add_argument("data", help="folder of training patches (e.g. OUT/prior-train from pipelines.default_assets)")
    p.add_argument("--work", required=True, help="folder for checkpoint.pt; an existing checkpoint is resumed")
    p.add_argument("--out", required=True, help="folder for the trained prior, loss_curve.png, samples.png, train_summary.json")
    p.add_argument("--resolution", type=int, default=defaults.resolution)
    p.add_argument("--block-out-channels", type=lambda s: tuple(int(c) for c in s.split(",")), default=defaults.block_out_channels,
                   help="channels per UNet level, comma-separated (default %(default)s)")
    p.add_argument("--layers-per-block", type=int, default=defaults.layers_per_block)
    p.add_argument("--no-attention", dest="attention", action="store_false", help="no self-attention (lowest level, middle block)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument("--max-steps", type=int, default=defaults.max_steps)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this many minutes of this invocation")
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="0 saves the raw weights")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num-samples", type=int, default=defaults.num_samples, help="unconditional samples drawn into samples.png (0: none)")
    p.add_argument("--sample-steps", type=int, default=defaults.sample_steps)
    p.add_argument("--fp16-weights", action="store_true", help="store the UNet weights in float16 (half the size)")
    p.add_argument("--no-export", action="store_true", help="only train and checkpoint; write --out later")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's). On a shared machine 1 can be several times faster than 2: "
                        "with more runnable processes than cores, the threads of one op wait for each other")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        resolution=args.resolution, block_out_channels=args.block_out_channels, layers_per_block=args.layers_per_block,
        attention=args.attention, batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        max_steps=args.max_steps, max_minutes=args.max_minutes, ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every,
        seed=args.seed, num_samples=args.num_samples, sample_steps=args.sample_steps, fp16_weights=args.fp16_weights,
    )
    trainer = train(args.data, args.work, config)
    print(f"stopped at step {trainer.step_count} after {trainer.train_seconds / 60:.1f} min of training; checkpoint in {args.work}", file=sys.stderr)
    if not args.no_export:
        command = "python -m pipelines.train_prior " + " ".join(sys.argv[1:] if argv is None else argv)
        summary = export(trainer, args.out, data=trainer.data, command=command)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
