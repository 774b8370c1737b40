"""The prior's training loop: one Trainer (model, EMA, optimizer, generator, history), its checkpoint, resume, and `train`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adir_ops.adaptation.losses import eps_mse_loss
from adir_ops.priors.diffusion import DiffusionPrior, linear_betas
from pipelines.prior_training.config import FIXED_ON_RESUME, TrainConfig, build_unet
from pipelines.prior_training.data import draw_batch, load_patches, validation_batch

CHECKPOINT = "checkpoint.pt"


def diffusion_loss(
    unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """DDPM's simple loss (`adir_ops.adaptation.losses.eps_mse_loss`) of a diffusers UNet2DModel, one timestep per patch."""
    return eps_mse_loss(lambda x_t, timesteps: unet(x_t, timesteps).sample, x0, t, noise, alphas_cumprod)


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

    def __init__(self, data: torch.Tensor, config: TrainConfig, *, load_init: bool = True):
        self.data = data
        self.config = config
        self.device = torch.device(config.device)
        self.unet = build_unet(config, config.seed).train()
        if config.init and load_init:  # a resumed run takes its weights from the checkpoint instead
            self.unet.load_state_dict(initial_weights(config), strict=True)
        self.unet.to(self.device)
        self.ema = build_unet(config, config.seed).eval().to(self.device) if config.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.load_state_dict(self.unet.state_dict())
            self.ema.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.alphas_cumprod = torch.cumprod(1.0 - linear_betas(config.num_train_timesteps), 0).float().to(self.device)
        self.step_count = 0
        self.losses: list[float] = []
        self.validation: list[tuple[int, float, float]] = []  # (step, raw, ema)
        self.train_seconds = 0.0

    def learning_rate(self) -> float:
        return self.config.learning_rate * min(1.0, (self.step_count + 1) / self.config.warmup_steps)

    def step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        # Every draw on the CPU generator, then moved: the same batches on any device.
        x0, t, noise = draw_batch(self.data, self.config.batch_size, self.config.num_train_timesteps, self.generator)
        with self.autocast():
            loss = diffusion_loss(
                self.unet, x0.to(self.device), t.to(self.device), noise.to(self.device), self.alphas_cumprod
            )
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

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def validate(self, batch) -> tuple[float, float]:
        batch = tuple(part.to(self.device) for part in batch)
        self.unet.eval()
        with self.autocast():
            raw = validation_loss(self.unet, batch, self.alphas_cumprod, self.config.batch_size)
            self.unet.train()
            ema = (
                validation_loss(self.ema, batch, self.alphas_cumprod, self.config.batch_size)
                if self.ema is not None
                else raw
            )
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
        # A checkpoint written on another device loads here: tensors follow the model.
        self.unet.load_state_dict(state["unet"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
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
        return DiffusionPrior(
            unet.eval(),
            linear_betas(self.config.num_train_timesteps),
            resolution=self.config.resolution,
            config={"source": "pipelines.train_prior", "step": self.step_count},
        ).to(self.device)


def initial_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The UNet state dict of the prior folder `config.init`, checked to be of `config`'s architecture."""
    prior = DiffusionPrior.from_diffusers(str(config.init))
    built = build_unet(config, config.seed).state_dict()
    state = {k: v.float() for k, v in prior.unet.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in built.items()}:
        raise ValueError(
            f"--init {config.init} holds a UNet of another architecture than this run's "
            f"(block_out_channels {config.block_out_channels}, layers_per_block {config.layers_per_block}); "
            "pass the same sizes it was trained with"
        )
    return state


def resume_or_start(data: torch.Tensor, config: TrainConfig, work: Path) -> Trainer:
    path = work / CHECKPOINT
    trainer = Trainer(data, config, load_init=not path.is_file())
    if path.is_file():
        state = torch.load(path, map_location=trainer.device, weights_only=True)
        saved = TrainConfig.from_dict(json.loads(state["config"]))
        changed = [k for k in FIXED_ON_RESUME if getattr(saved, k) != getattr(config, k)]
        if changed:
            raise ValueError(
                f"{path} was trained with other settings ({', '.join(f'{k}={getattr(saved, k)!r}' for k in changed)}); "
                f"rerun with those, or use another --work folder to start afresh"
            )
        trainer.load_state_dict(state)
    return trainer


def train(
    data_dir: str | os.PathLike, work: str | os.PathLike, config: TrainConfig, *, progress: bool = True
) -> Trainer:
    """Train (or resume) until `max_steps` or `max_minutes`, checkpointing on the way and at the end."""
    from tqdm import tqdm

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_patches(data_dir, config.resolution)
    trainer = resume_or_start(data, config, work)
    val_batch = validation_batch(data, config)
    start = time.monotonic()
    deadline = None if config.max_minutes is None else start + 60.0 * config.max_minutes
    bar = tqdm(
        total=config.max_steps,
        initial=trainer.step_count,
        disable=not progress,
        desc="train prior",
        unit="step",
        file=sys.stderr,
    )
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
                bar.set_postfix(
                    loss=f"{sum(recent) / len(recent):.4f}",
                    s_per_step=f"{trainer.train_seconds / max(trainer.step_count, 1):.2f}",
                )
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
