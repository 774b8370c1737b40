"""Prior training on tiny settings: it learns, resumes bit for bit, time-boxes cleanly, and exports a prior that loads."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from adir_ops.adaptation import losses
from adir_ops.priors.diffusion import DiffusionPrior
from pipelines import train_prior as tp
from pipelines.photos import cut, load_photos
from pipelines.prior_training import trainer as prior_trainer

TINY = tp.TrainConfig(
    resolution=16,
    block_out_channels=(8, 16),
    layers_per_block=1,
    attention=False,
    batch_size=4,
    warmup_steps=1,
    max_steps=4,
    checkpoint_every=2,
    validation_size=4,
    num_samples=4,
    sample_steps=2,
)


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """Eight real 16 px patches of a shipped photo, in a nested folder as default_assets writes them."""
    folder = tmp_path_factory.mktemp("patches")
    photo = load_photos(["gcompris-objects-cup"])["gcompris-objects-cup"]
    (folder / "cup").mkdir()
    for i in range(8):
        box = (40 * i, 100, 40 * i + 32, 132)
        Image.fromarray(cut(photo, box, 16)).save(folder / "cup" / f"p{i}.png")
    return folder


def _same_state(a, b, where="state") -> None:
    """Exact equality of nested state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same_state(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_gives_the_weights_of_an_uninterrupted_run(patches, tmp_path):
    whole = tp.train(patches, tmp_path / "whole", TINY, progress=False)
    tp.train(patches, tmp_path / "parts", replace(TINY, max_steps=2), progress=False)
    resumed = tp.train(patches, tmp_path / "parts", TINY, progress=False)
    assert resumed.step_count == whole.step_count == 4
    assert resumed.losses == whole.losses
    _same_state(resumed.unet.state_dict(), whole.unet.state_dict())
    _same_state(resumed.ema.state_dict(), whole.ema.state_dict())
    _same_state(resumed.optimizer.state_dict(), whole.optimizer.state_dict())
    assert torch.equal(resumed.generator.get_state(), whole.generator.get_state())


def test_checkpoint_loads_with_weights_only(patches, tmp_path):
    tp.train(patches, tmp_path, replace(TINY, max_steps=2), progress=False)
    state = torch.load(tmp_path / tp.CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["step"] == 2 and len(state["losses"]) == 2
    assert json.loads(state["config"])["block_out_channels"] == [8, 16]


def test_resume_with_another_model_is_refused(patches, tmp_path):
    tp.train(patches, tmp_path, replace(TINY, max_steps=2), progress=False)
    with pytest.raises(ValueError, match="block_out_channels"):
        tp.train(patches, tmp_path, replace(TINY, block_out_channels=(8, 24)), progress=False)


def test_time_box_stops_and_saves(patches, tmp_path):
    trainer = tp.train(patches, tmp_path, replace(TINY, max_minutes=0.0), progress=False)
    assert trainer.step_count == 0
    assert (tmp_path / tp.CHECKPOINT).is_file()
    assert tp.train(patches, tmp_path, replace(TINY, max_steps=1), progress=False).step_count == 1


def test_training_lowers_the_validation_loss(patches, tmp_path):
    config = replace(TINY, max_steps=40, checkpoint_every=40, learning_rate=3e-3, batch_size=8, validation_size=8)
    before = tp.train(patches, tmp_path, replace(config, max_steps=1), progress=False)
    first = before.validation[-1][1]
    after = tp.train(patches, tmp_path, config, progress=False)
    assert after.validation[-1][1] < 0.8 * first


def test_a_training_step_trains_on_the_eps_mse_loss_of_its_batch(patches, monkeypatch):
    """A step's loss is adir_ops.adaptation.losses.eps_mse_loss, the one LoRA adaptation uses too, one timestep per patch."""
    batches = []

    def recording(eps, x0, t, noise, alphas_cumprod):
        loss = losses.eps_mse_loss(eps, x0, t, noise, alphas_cumprod)
        batches.append((x0.clone(), t.clone(), noise.clone(), alphas_cumprod, loss.item()))
        return loss

    monkeypatch.setattr(prior_trainer, "eps_mse_loss", recording)
    trainer = tp.Trainer(tp.load_patches(patches, TINY.resolution), TINY)
    assert trainer.step() == batches[0][-1]
    x0, t, noise, abar, first = batches[0]
    initial = tp.build_unet(TINY, TINY.seed).train()  # the weights the first step saw
    a = abar[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        again = losses.eps_mse_loss(lambda x_t, s: initial(x_t, s).sample, x0, t, noise, abar).item()
        eq_17 = torch.nn.functional.mse_loss(initial(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample, noise).item()
    assert again == pytest.approx(first, rel=1e-5) and eq_17 == pytest.approx(first, rel=1e-5)


def test_no_global_rng_draws(patches, tmp_path):
    state = torch.get_rng_state()
    tp.train(patches, tmp_path, replace(TINY, max_steps=2), progress=False)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("fp16", [False, True])
def test_export_writes_a_prior_that_loads(patches, tmp_path, fp16):
    config = replace(TINY, fp16_weights=fp16)
    trainer = tp.train(patches, tmp_path / "work", config, progress=False)
    summary = tp.export(trainer, tmp_path / "out", data=trainer.data, command="test")
    out = tmp_path / "out"
    for name in ("loss_curve.png", "samples.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 16 and im.size[1] > 16
    assert json.loads((out / tp.SUMMARY).read_text())["steps"] == 4 == summary["steps"]
    assert summary["weights_dtype"] == ("float16" if fp16 else "float32")
    prior = DiffusionPrior.from_diffusers(str(out))
    assert prior.resolution == 16 and prior.dtype == torch.float32
    torch.testing.assert_close(prior.alphas_cumprod, trainer.prior().alphas_cumprod)
    x = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        want = trainer.prior().eps(x, t)
        got = prior.eps(x, t)
    torch.testing.assert_close(got, want, atol=2e-2 if fp16 else 0, rtol=2e-2 if fp16 else 0)


def test_wrong_patch_size_names_the_file(tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="odd.png is 20x20"):
        tp.load_patches(tmp_path, 16)
    with pytest.raises(FileNotFoundError, match="default_assets"):
        tp.load_patches(tmp_path / "empty", 16)


def test_committed_unet64_prior_loads_and_matches_its_summary():
    from safetensors import safe_open

    prior = tp.load_unet64()
    summary = json.loads((tp.UNET64 / tp.SUMMARY).read_text())
    assert (prior.resolution, prior.channels, prior.num_train_timesteps) == (64, 3, 1000)
    assert prior.dtype == torch.float32
    assert sum(p.numel() for p in prior.unet.parameters()) == summary["parameters"]
    with safe_open(str(tp.UNET64 / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        stored = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert stored == {"F16" if summary["weights_dtype"] == "float16" else "F32"}
    torch.testing.assert_close(prior.betas, tp.linear_betas(1000))
    x = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = prior.eps(x, torch.tensor([999]))
    # At t = T-1, x_t is almost pure noise: a trained prior predicts it back.
    assert torch.nn.functional.mse_loss(eps, x) < 0.05


def test_init_starts_from_an_exported_prior_and_the_summary_names_the_data(patches, tmp_path):
    first = tp.train(patches, tmp_path / "work", TINY, progress=False)
    summary = tp.export(first, tmp_path / "out", data=first.data, command="test")
    assert summary["data_sha256"] == tp.export(first, tmp_path / "again", data=first.data)["data_sha256"]
    # One patch changed: another hash, so a summary tells which data made a prior.
    changed = first.data.clone()
    changed[0, 0, 0, 0] ^= 1
    assert tp.export(first, tmp_path / "other", data=changed)["data_sha256"] != summary["data_sha256"]

    warm = tp.Trainer(first.data, replace(TINY, init=str(tmp_path / "out"), ema_decay=0.0))
    exported = DiffusionPrior.from_diffusers(str(tmp_path / "out")).unet.state_dict()
    _same_state(warm.unet.state_dict(), exported)  # the run starts at the exported (EMA) weights, not at random
    with pytest.raises(ValueError, match="another architecture"):
        tp.Trainer(first.data, replace(TINY, init=str(tmp_path / "out"), block_out_channels=(8, 8)))
    # A resumed run takes its weights from the checkpoint: the init folder may be gone by then.
    moved = tmp_path / "moved"
    config = replace(TINY, init=str(moved), max_steps=2)
    (tmp_path / "out").rename(moved)
    tp.train(patches, tmp_path / "warm", config, progress=False)
    moved.rename(tmp_path / "elsewhere")
    assert tp.train(patches, tmp_path / "warm", replace(config, max_steps=4), progress=False).step_count == 4


def test_bf16_is_refused_off_cuda():
    with pytest.raises(ValueError, match="bf16 is for CUDA"):
        replace(TINY, bf16=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_resumes_the_cpu_run(patches, tmp_path):
    tp.train(patches, tmp_path / "work", replace(TINY, max_steps=2), progress=False)
    trainer = tp.train(patches, tmp_path / "work", replace(TINY, device="cuda", bf16=True), progress=False)
    assert trainer.step_count == 4 and next(trainer.unet.parameters()).is_cuda
