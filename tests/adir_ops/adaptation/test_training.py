"""LoRA adaptation (eq. 18): what trains, that it learns, that the base survives, and the saved file."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adir_ops.adaptation import losses
from adir_ops.adaptation.adapter import Adapter
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.lora import lora_targets
from adir_ops.adaptation.training import adapt, upscale_to_resolution
from adir_ops.priors.diffusion import DiffusionPrior, linear_betas
from adir_ops.priors.guided_diffusion import guided_diffusion_unet

# lr raised and steps cut from the paper's (1e-4, 400) so a random tiny UNet learns in seconds:
# measured over 4 seeds, the fixed-set loss falls 49-52%.
FAST = AdaptConfig(learning_rate=1e-2, steps=30)

# CPU GEMM kernels pick code paths by memory alignment, so the unadapted nn.Linear layers can
# differ in the last bit between two identical calls; LoRA effects here are > 1e-2.
SAME = {"rtol": 0.0, "atol": 1e-6}


def smooth_images(n, height, width, seed):
    """Low-frequency colour fields in [-1, 1]: learnable structure, unlike white noise."""
    coarse = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return list(F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False))


def snapshot(unet):
    return {
        "state": {k: v.clone() for k, v in unet.state_dict().items()},
        "types": [(name, type(m)) for name, m in unet.named_modules()],
        "requires_grad": {name: p.requires_grad for name, p in unet.named_parameters()},
        "training": {name: m.training for name, m in unet.named_modules()},
        "attributes": set(vars(unet)),
    }


def assert_unchanged(unet, before):
    after = snapshot(unet)
    assert after["types"] == before["types"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], before["state"][k]) for k in before["state"])
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["attributes"] == before["attributes"]


def eps_of(prior, seed=7):
    x = torch.randn(
        2, prior.channels, prior.resolution, prior.resolution, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return prior.eps(x, torch.tensor([20, 700]))


def lora_formula(unet, rank):
    """peft's conv LoRA: A = Conv(in, r, k x k), B = Conv(r, out, 1 x 1, groups) for every Conv2d."""
    return sum(
        rank * m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels * rank // m.groups
        for m in unet.modules()
        if isinstance(m, nn.Conv2d)
    )


@pytest.fixture(scope="module")
def trained():
    """One FAST adaptation of a tiny prior, with what was observed before, during and after it."""
    prior = DiffusionPrior.tiny(resolution=16)
    prior.unet.eval()
    prior.unet.conv_in.weight.requires_grad_(False)  # a caller's flag that must survive
    before = snapshot(prior.unet)
    expected_count = lora_formula(prior.unet, FAST.lora_rank)
    rng_before = torch.get_rng_state()
    during = {}

    def watch(step, loss):
        if step == 0:
            during["trainable"] = {n: p.numel() for n, p in prior.unet.named_parameters() if p.requires_grad}
            during["training"] = prior.unet.training

    images = smooth_images(4, 20, 24, seed=0)
    adapter = adapt(prior, images, FAST, torch.Generator().manual_seed(1), callback=watch)
    return {
        "prior": prior,
        "adapter": adapter,
        "images": images,
        "before": before,
        "during": during,
        "expected_count": expected_count,
        "rng_unchanged": torch.equal(rng_before, torch.get_rng_state()),
    }


# ---------------------------------------------------------------- what trains
def test_only_lora_parameters_train_and_their_count_is_the_lora_formula(trained):
    trainable = trained["during"]["trainable"]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(trainable.values()) == trained["expected_count"]
    assert trained["adapter"].num_parameters == trained["expected_count"]
    assert trained["during"]["training"] is True


def test_base_unet_is_bit_identical_with_its_flags_and_modes_after_adapt(trained):
    assert_unchanged(trained["prior"].unet, trained["before"])
    assert trained["rng_unchanged"], "adapt drew from the global RNG"


def test_loss_curve_has_one_finite_entry_per_step(trained):
    losses = trained["adapter"].losses
    assert len(losses) == FAST.steps and all(torch.isfinite(torch.tensor(losses)))


def test_adapt_trains_on_the_eps_mse_loss_of_its_batch(monkeypatch):
    """adapt's loss is adir_ops.adaptation.losses.eps_mse_loss, the one prior training uses too, of its shared-timestep batch."""
    batches = []
    real = losses.eps_mse_loss

    def recording(eps, x0, t, noise, alphas_cumprod, **options):
        loss = real(eps, x0, t, noise, alphas_cumprod, **options)
        batches.append((x0.clone(), t, noise.clone(), alphas_cumprod, loss.mean().item()))
        return loss

    # DiffusionPrior.denoising_loss, which adapt calls, reads it from adir_ops.adaptation.losses at call time.
    monkeypatch.setattr(losses, "eps_mse_loss", recording)
    prior = DiffusionPrior.tiny(resolution=16)
    config = AdaptConfig(steps=2, batch_size=3)
    adapter = adapt(prior, smooth_images(3, 16, 20, seed=2), config, torch.Generator().manual_seed(3))
    assert adapter.losses == pytest.approx([batch[-1] for batch in batches], rel=1e-6)
    x0, timesteps, noise, abar, first = batches[0]
    # One timestep shared by the batch (given per image: adapt is adapt_many of one image).
    assert timesteps.shape == (config.batch_size,) and len(set(timesteps.tolist())) == 1
    assert abar.dtype == torch.float64
    t = int(timesteps[0])
    a = float(abar[t])
    # At step 0 the LoRA (B = 0) leaves the UNet as it is again after adapt.
    with torch.no_grad():
        again = losses.eps_mse_loss(prior.eps, x0, t, noise, abar).item()
        eq_18 = F.mse_loss(prior.eps(a**0.5 * x0 + (1 - a) ** 0.5 * noise, timesteps), noise).item()
        per_image = losses.eps_mse_loss(prior.eps, x0, timesteps, noise, abar.float()).item()
    for other in (again, eq_18, per_image):
        assert other == pytest.approx(first, rel=1e-5)


# ---------------------------------------------------------------- it learns
def test_loss_on_a_fixed_set_falls_by_at_least_30_percent(trained):
    prior, adapter = trained["prior"], trained["adapter"]
    fixed = torch.stack([image[:, 2:18, 4:20] for image in trained["images"]])
    timesteps = [50, 200, 400, 600, 800, 950]
    noise = torch.randn(len(timesteps), *fixed.shape, generator=torch.Generator().manual_seed(123))

    def fixed_loss():
        total = 0.0
        with torch.no_grad():
            for t, n in zip(timesteps, noise):
                abar = prior.alphas_cumprod[t].float()
                x_t = abar.sqrt() * fixed + (1 - abar).sqrt() * n
                total += F.mse_loss(prior.eps(x_t, torch.tensor(t)), n).item()
        return total / len(timesteps)

    base = fixed_loss()
    with adapter.applied(prior):
        adapted = fixed_loss()
    assert adapted <= 0.7 * base, f"loss {base:.4f} -> {adapted:.4f}"


def test_fresh_lora_starts_equal_to_the_base_and_training_moves_it(trained):
    prior = trained["prior"]
    base = eps_of(prior)
    untrained = adapt(prior, trained["images"], AdaptConfig(steps=0), torch.Generator().manual_seed(0))
    with untrained.applied(prior):
        torch.testing.assert_close(eps_of(prior), base, **SAME)
    with trained["adapter"].applied(prior):
        assert (eps_of(prior) - base).abs().max() > 1e-2


def test_a_guided_diffusion_unet_adapts_its_conv2d_layers_and_survives():
    small = {
        "image_size": 32,
        "model_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": (1, 2),
        "attention_resolutions": (16,),
        "num_head_channels": 32,
    }
    unet = guided_diffusion_unet(**small)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random everywhere: OpenAI's init zeroes the output conv
        for p in unet.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    prior = DiffusionPrior(unet, linear_betas(1000), resolution=32, kind="guided-diffusion")
    targets = lora_targets(unet)
    assert targets == [n for n, m in unet.named_modules() if isinstance(m, nn.Conv2d)]
    assert any(isinstance(m, nn.Conv1d) for m in unet.modules())  # attention qkv: not a target
    before = snapshot(unet)
    base = eps_of(prior)
    adapter = adapt(prior, smooth_images(1, 24, 40, seed=0), AdaptConfig(steps=2, batch_size=2, learning_rate=1e-2), g)
    assert_unchanged(unet, before)
    with adapter.applied(prior):
        assert (eps_of(prior) - base).abs().max() > 1e-3
    torch.testing.assert_close(eps_of(prior), base, **SAME)


# ---------------------------------------------------------------- applied()
def test_applied_restores_the_unet_exactly_and_refuses_nesting(trained):
    prior, adapter = trained["prior"], trained["adapter"]
    before = snapshot(prior.unet)
    with adapter.applied(prior):
        with pytest.raises(RuntimeError, match="already carries a LoRA"), adapter.applied(prior):
            pass
        with pytest.raises(RuntimeError, match="already carries a LoRA"):
            adapt(prior, trained["images"], AdaptConfig(steps=1), torch.Generator().manual_seed(0))
    assert_unchanged(prior.unet, before)
    with pytest.raises(KeyError, match="inside the block"), adapter.applied(prior):
        raise KeyError("inside the block")
    assert_unchanged(prior.unet, before)


def test_adapter_refuses_a_prior_of_another_architecture(trained):
    gray = DiffusionPrior.tiny(resolution=16, channels=1)
    with pytest.raises(ValueError, match="trained on another UNet"), trained["adapter"].applied(gray):
        pass


# ---------------------------------------------------------------- the file
def test_save_then_load_gives_identical_eps(trained, tmp_path):
    prior, adapter = trained["prior"], trained["adapter"]
    path = tmp_path / "adapter.safetensors"
    adapter.save(str(path))
    loaded = Adapter.load(str(path))
    assert loaded.config == adapter.config and loaded.targets == adapter.targets
    assert loaded.losses == adapter.losses and loaded.prior_config == adapter.prior_config
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in adapter.state_dict.items())
    with adapter.applied(prior):
        expected = eps_of(prior)
    with loaded.applied(prior):
        torch.testing.assert_close(eps_of(prior), expected, **SAME)


def test_file_is_in_the_diffusers_lora_format(trained, tmp_path):
    from safetensors import safe_open

    path = tmp_path / "adapter.safetensors"
    trained["adapter"].save(str(path))
    with safe_open(str(path), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    lora = json.loads(metadata["lora_adapter_metadata"])
    assert lora["unet.r"] == 16 and lora["unet.lora_alpha"] == 8
    assert lora["unet.target_modules"] == list(trained["adapter"].targets)


def test_a_diffusers_unet_loads_the_file_and_predicts_the_same_eps(trained, tmp_path):
    from diffusers import UNet2DModel
    from diffusers.loaders import PeftAdapterMixin

    # UNet2DModel lacks diffusers' adapter API; the mixin is how diffusers adds it to a model.
    class UNet2DModelWithLora(UNet2DModel, PeftAdapterMixin):
        pass

    prior, adapter = trained["prior"], trained["adapter"]
    path = tmp_path / "adapter.safetensors"
    adapter.save(str(path))
    theirs = UNet2DModelWithLora.from_config(prior.unet.config)
    theirs.load_state_dict(prior.unet.state_dict())
    theirs.load_lora_adapter(str(path), prefix="unet", use_safetensors=True, adapter_name="adir")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([20, 700])
    with torch.no_grad():
        reference = theirs(x, t).sample
        with adapter.applied(prior):
            ours = prior.eps(x, t)
    torch.testing.assert_close(ours, reference, **SAME)


# ---------------------------------------------------------------- determinism and inputs
def test_same_generator_gives_the_same_adapter_and_another_seed_does_not():
    prior = DiffusionPrior.tiny(resolution=16)
    images = smooth_images(3, 18, 30, seed=4)
    config = AdaptConfig(steps=4, learning_rate=1e-2, batch_size=3, hflip=True)
    a = adapt(prior, images, config, torch.Generator().manual_seed(5))
    b = adapt(prior, images, config, torch.Generator().manual_seed(5))
    c = adapt(prior, images, config, torch.Generator().manual_seed(6))
    assert a.losses == b.losses
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_small_images_are_upscaled_keeping_their_aspect():
    assert upscale_to_resolution(torch.zeros(3, 10, 7), 16).shape == (3, 23, 16)
    assert upscale_to_resolution(torch.zeros(3, 12, 40), 16).shape == (3, 16, 53)
    large = torch.rand(3, 20, 30) * 2 - 1
    assert upscale_to_resolution(large, 16) is large  # cropped later, never shrunk
    ramp = torch.linspace(-1, 1, 8).repeat(3, 8, 1)
    assert upscale_to_resolution(ramp, 16).abs().max() <= 1.0


def test_small_and_non_square_neighbours_adapt():
    prior = DiffusionPrior.tiny(resolution=16)
    images = smooth_images(1, 10, 7, seed=1) + smooth_images(1, 12, 40, seed=2) + smooth_images(1, 16, 16, seed=3)
    adapter = adapt(prior, images, AdaptConfig(steps=3, batch_size=4), torch.Generator().manual_seed(0))
    assert len(adapter.losses) == 3 and all(torch.isfinite(torch.tensor(adapter.losses)))


def test_fp16_unet_trains_fp32_lora_and_stays_fp16():
    prior = DiffusionPrior.tiny(resolution=16)
    prior.unet.half()
    dtypes = set()
    adapter = adapt(
        prior,
        smooth_images(2, 16, 16, seed=0),
        AdaptConfig(steps=2, batch_size=2),
        torch.Generator().manual_seed(0),
        callback=lambda step, loss: dtypes.update(p.dtype for p in prior.unet.parameters() if p.requires_grad),
    )
    assert dtypes == {torch.float32}
    assert all(p.dtype == torch.float16 for p in prior.unet.parameters())
    assert all(v.dtype == torch.float32 for v in adapter.state_dict.values())


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "at least one neighbour"),
        ([torch.zeros(1, 16, 16)], "has 1 channels; the prior expects 3"),
        ([torch.zeros(3, 16, 16), torch.full((3, 16, 16), 255.0)], r"image 1 spans \[255, 255\]"),
        ([torch.zeros(16, 16)], r"must be a \(C, H, W\) tensor"),
    ],
)
def test_bad_neighbours_are_refused_with_the_fix(images, message):
    prior = DiffusionPrior.tiny(resolution=16)
    with pytest.raises(ValueError, match=message):
        adapt(prior, images, AdaptConfig(steps=1), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "field, value",
    [
        ("lora_rank", 0),
        ("lora_alpha", 0),
        ("learning_rate", -1e-4),
        ("steps", -1),
        ("batch_size", 0),
        ("steps", 2.5),
        ("hflip", 1),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"AdaptConfig.{field}"):
        AdaptConfig(**{field: value})


def test_config_round_trips_and_rejects_unknown_fields():
    config = AdaptConfig(lora_rank=4, hflip=True)
    assert AdaptConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown AdaptConfig field"):
        AdaptConfig.from_dict({"lora_rnak": 4})
