"""Train the committed UNet prior (`--prior unet64`): a small diffusers UNet2DModel DDPM (eps prediction, linear 1000-step schedule) on a folder of patches.

    python -m pipelines.train_prior DATA/prior-train --work runs/prior --out adir_ops/priors/weights/unet64 --max-minutes 40

`--work` holds `checkpoint.pt` (model, EMA, optimizer and generator state; loads with
`torch.load(weights_only=True)`), written every `--checkpoint-every` steps and when the run
stops. Rerunning the same command resumes from it and, on the same machine and thread count,
gives bit for bit the weights of an uninterrupted run: every draw (batch indices, flips,
timesteps, noise) comes from one torch.Generator whose state is checkpointed. The run stops
cleanly at `--max-steps` or after `--max-minutes` of this invocation, and then writes `--out`:
the prior (`unet/`, `scheduler/`: load with `DiffusionPrior.from_diffusers`), `loss_curve.png`,
`samples.png` (training patches beside unconditional samples) and `train_summary.json`.

Size: the default UNet (levels 16, 32, 64, 128, 2 layers per block, 64 px) is 3.88M
parameters; the sizes tried and their seconds per step, with one thread and with two (hence
`--threads`), are in docs/priors.md, "Training the UNet prior". 64 px is the issue's floor;
128 px costs four times as much per step.

The weights saved are the EMA of the training weights (`--ema-decay`; 0 saves the raw
weights): at every checkpoint both are scored on one fixed validation batch (fixed patches,
timesteps and noise) so the choice is measured, and the scores are in the summary and curve.

The parts live in `pipelines.prior_training` (config, data, trainer, export); every name
they define is importable from here too, where callers and notebooks have always found it.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from adir_ops.priors.diffusion import DiffusionPrior, linear_betas
from pipelines.prior_training.config import FIXED_ON_RESUME, TrainConfig, build_unet
from pipelines.prior_training.data import IMAGE_EXTENSIONS, draw_batch, load_patches, to_model_range, validation_batch
from pipelines.prior_training.export import (
    SUMMARY,
    UNET64,
    export,
    grid,
    load_unet64,
    plot_loss_curve,
    write_sample_sheet,
)
from pipelines.prior_training.trainer import (
    CHECKPOINT,
    Trainer,
    diffusion_loss,
    resume_or_start,
    train,
    validation_loss,
)

__all__ = [
    "CHECKPOINT",
    "UNET64",
    "FIXED_ON_RESUME",
    "IMAGE_EXTENSIONS",
    "SUMMARY",
    "DiffusionPrior",
    "TrainConfig",
    "Trainer",
    "build_unet",
    "diffusion_loss",
    "draw_batch",
    "export",
    "grid",
    "linear_betas",
    "load_unet64",
    "load_patches",
    "main",
    "parse_args",
    "plot_loss_curve",
    "resume_or_start",
    "to_model_range",
    "train",
    "validation_batch",
    "validation_loss",
    "write_sample_sheet",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.train_prior", description=__doc__.splitlines()[0])
    p.add_argument("data", help="folder of training patches (e.g. OUT/prior-train from pipelines.default_assets)")
    p.add_argument("--work", required=True, help="folder for checkpoint.pt; an existing checkpoint is resumed")
    p.add_argument(
        "--out", required=True, help="folder for the trained prior, loss_curve.png, samples.png, train_summary.json"
    )
    p.add_argument("--resolution", type=int, default=defaults.resolution)
    p.add_argument(
        "--block-out-channels",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        default=defaults.block_out_channels,
        help="channels per UNet level, comma-separated (default %(default)s)",
    )
    p.add_argument("--layers-per-block", type=int, default=defaults.layers_per_block)
    p.add_argument(
        "--no-attention", dest="attention", action="store_false", help="no self-attention (lowest level, middle block)"
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument("--max-steps", type=int, default=defaults.max_steps)
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop (and save) after this many minutes of this invocation"
    )
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="0 saves the raw weights")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--num-samples",
        type=int,
        default=defaults.num_samples,
        help="unconditional samples drawn into samples.png (0: none)",
    )
    p.add_argument("--sample-steps", type=int, default=defaults.sample_steps)
    p.add_argument("--fp16-weights", action="store_true", help="store the UNet weights in float16 (half the size)")
    p.add_argument("--no-export", action="store_true", help="only train and checkpoint; write --out later")
    p.add_argument("--device", default=defaults.device, help="torch device of the steps, e.g. cuda (default cpu)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the UNet on CUDA (fp32 master weights)")
    p.add_argument(
        "--init",
        default=None,
        help="a prior folder (e.g. adir_ops/priors/weights/unet64) to start from instead of random",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's). On a shared machine 1 can be several times faster than 2: "
        "with more runnable processes than cores, the threads of one op wait for each other",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        resolution=args.resolution,
        block_out_channels=args.block_out_channels,
        layers_per_block=args.layers_per_block,
        attention=args.attention,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        num_samples=args.num_samples,
        sample_steps=args.sample_steps,
        fp16_weights=args.fp16_weights,
        device=args.device,
        bf16=args.bf16,
        init=args.init,
    )
    trainer = train(args.data, args.work, config)
    print(
        f"stopped at step {trainer.step_count} after {trainer.train_seconds / 60:.1f} min of training; checkpoint in {args.work}",
        file=sys.stderr,
    )
    if not args.no_export:
        command = "python -m pipelines.train_prior " + " ".join(sys.argv[1:] if argv is None else argv)
        summary = export(trainer, args.out, data=trainer.data, command=command)
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
