"""The reverse DDPM chain on respaced timesteps: the schedule, its first x, the posterior, ||A^T A||, one step's noise."""

from types import SimpleNamespace

import pytest
import torch

from adir_ops.physics.operators import make_operator
from adir_ops.priors.diffusion import DiffusionPrior, linear_betas
from adir_ops.rng import randn_per_image
from adir_ops.sampling.chain import (
    operator_norm,
    posterior,
    prior_schedule,
    report,
    respace,
    sample,
    start_chain,
    with_noise,
)

R = 16


@pytest.fixture(scope="module")
def prior():
    return DiffusionPrior.tiny(resolution=R)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def schedule_only(valid=None, num_train=1000):
    """What the chain reads of a prior besides its eps: the train schedule and, for a denoiser, its valid steps."""
    abar = torch.cumprod(1 - linear_betas(num_train), 0)
    return SimpleNamespace(alphas_cumprod=abar, num_train_timesteps=num_train, valid_timesteps=valid)


def test_respace_with_all_steps_is_the_ddpm_posterior(prior):
    s = respace(prior.alphas_cumprod, prior.num_train_timesteps)
    betas, abar = prior.betas, prior.alphas_cumprod
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    assert torch.equal(s.timesteps, torch.arange(prior.num_train_timesteps))
    assert s.betas.dtype == torch.float64
    torch.testing.assert_close(s.betas, betas, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(s.posterior_variance, prior.posterior_variance(), rtol=1e-9, atol=1e-15)
    # Ho et al. eq. 7 coefficients, written from the train betas.
    torch.testing.assert_close(s.posterior_mean_coef1, betas * abar_prev.sqrt() / (1 - abar), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(
        s.posterior_mean_coef2, (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar), rtol=1e-9, atol=1e-15
    )


def test_respace_keeps_evenly_spaced_steps_from_first_to_last(prior):
    s = respace(prior.alphas_cumprod, 100)
    gaps = s.timesteps.diff()
    assert len(s.timesteps) == 100 and s.timesteps[0] == 0 and s.timesteps[-1] == 999
    assert set(gaps.tolist()) <= {10, 11}
    assert s.posterior_variance[0] == 0 and (s.posterior_variance[1:] > 0).all()
    with pytest.raises(ValueError, match="between 1 and the prior's 1000"):
        respace(prior.alphas_cumprod, 0)


def test_respaced_posterior_matches_diffusers_ddpm_scheduler_with_the_same_steps(prior):
    """diffusers' DDPMScheduler with custom timesteps is an independent respaced-DDPM implementation."""
    from diffusers import DDPMScheduler

    s = respace(prior.alphas_cumprod, 10)
    ref = DDPMScheduler(trained_betas=prior.betas.tolist(), variance_type="fixed_small", clip_sample=True)
    ref.set_timesteps(timesteps=s.timesteps.flip(0).tolist())
    x = torch.randn(2, 3, R, R, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i in (9, 5, 1, 0):
            out = posterior(prior, x, i, s)
            got = ref.step(out["eps"], int(s.timesteps[i]), x, generator=torch.Generator().manual_seed(1))
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) if i > 0 else 0
            torch.testing.assert_close(got.pred_original_sample, out["x0_hat"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                got.prev_sample, out["mu"] + out["variance"] ** 0.5 * noise, rtol=1e-5, atol=1e-5
            )


def test_operator_norm_is_the_top_eigenvalue_and_batch_independent():
    op = make_operator("sr4", image_size=(R, R))
    norm = operator_norm(op, (3, 3, R, R), dtype=torch.float64, device=torch.device("cpu"))
    assert norm.shape == (3,) and torch.equal(norm, norm[:1].expand(3))
    basis = torch.eye(3 * R * R, dtype=torch.float64).view(-1, 3, R, R)
    dense = op.A(basis).flatten(1).T  # the matrix of A, one column per pixel
    top = torch.linalg.matrix_norm(dense, ord=2) ** 2
    # Power iteration approaches the top eigenvalue from below; a lower bound within a few
    # percent only lets a capped step reach ~1.03, far from the divergence at 2.
    assert 0.97 * top <= norm[0] <= top * (1 + 1e-9)
    colorize = make_operator("colorize", image_size=(R, R))
    torch.testing.assert_close(
        operator_norm(colorize, (1, 3, R, R), dtype=torch.float64, device=torch.device("cpu")),
        torch.tensor([1 / 3], dtype=torch.float64),
    )


@pytest.mark.parametrize("valid", [None, 168, 1])
def test_respaced_timesteps_walk_strictly_down_within_the_train_range(valid):
    """The sampler walks timesteps from last to first: every step kept, none twice, none outside 0 .. valid - 1."""
    fake = schedule_only(valid)
    top = 1000 if valid is None else valid
    for steps in sorted({1, 2, 3, 10, 99, 100, 333, top - 1, top} & set(range(1, top + 1))):
        walked = prior_schedule(fake, steps).timesteps.flip(0)
        assert len(walked) == steps
        assert int(walked[0]) == top - 1 and int(walked[-1]) >= 0
        assert (walked.diff() < 0).all(), f"steps={steps}: {walked.tolist()}"
        if steps > 1:
            assert int(walked[-1]) == 0


def test_respace_refuses_more_steps_than_the_usable_range_and_a_bad_valid_range():
    abar = schedule_only().alphas_cumprod
    with pytest.raises(ValueError, match="between 1 and the prior's 168 usable train timesteps; got 169"):
        respace(abar, 169, valid=168)
    for valid in (0, 1001):
        with pytest.raises(ValueError, match="valid must be between 1 and the prior's 1000 train timesteps"):
            respace(abar, 1, valid=valid)


def test_the_full_chain_starts_from_each_images_own_noise():
    fake = schedule_only()
    schedule = prior_schedule(fake, 5)
    x = start_chain(fake, schedule, (2, 3, 4, 4), gens(1, 2), dtype=torch.float64, device="cpu")
    torch.testing.assert_close(x, randn_per_image((2, 3, 4, 4), gens(1, 2), dtype=torch.float64), rtol=0, atol=0)


def test_a_chain_cut_short_starts_from_the_start_image_noised_to_its_first_step():
    fake = schedule_only(valid=168)
    schedule = prior_schedule(fake, 4)
    abar = float(fake.alphas_cumprod[167])
    assert int(schedule.timesteps[-1]) == 167
    start = torch.linspace(-1, 1, 16, dtype=torch.float64).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    noise = randn_per_image((2, 3, 4, 4), gens(3, 4), dtype=torch.float64)
    x = start_chain(fake, schedule, (2, 3, 4, 4), gens(3, 4), dtype=torch.float64, device="cpu", start=start)
    torch.testing.assert_close(x, abar**0.5 * start + (1 - abar) ** 0.5 * noise, rtol=0, atol=1e-15)
    gray = start_chain(fake, schedule, (2, 3, 4, 4), gens(3, 4), dtype=torch.float64, device="cpu")
    torch.testing.assert_close(gray, (1 - abar) ** 0.5 * noise, rtol=0, atol=1e-15)  # no start: mid-gray, 0


def test_a_step_adds_sigma_times_each_images_noise_and_the_last_step_adds_none():
    mean = torch.zeros(2, 3, 4, 4)
    last = with_noise(mean, 0, 0.25, gens(5, 6))
    assert last is mean
    stepped = with_noise(mean, 3, 0.25, gens(5, 6))
    torch.testing.assert_close(stepped, 0.5 * randn_per_image((2, 3, 4, 4), gens(5, 6)), rtol=0, atol=0)


def test_the_callback_counts_steps_up_from_the_noisiest(prior):
    seen = []
    schedule = respace(prior.alphas_cumprod, 3)
    for i in reversed(range(3)):
        report(seen.append, schedule, i, t=int(schedule.timesteps[i]))
    report(None, schedule, 0)  # no callback: nothing to call
    assert [d["i"] for d in seen] == [0, 1, 2]
    assert [d["t"] for d in seen] == schedule.timesteps.flip(0).tolist()


def test_posterior_of_the_last_step_is_x0_hat_clipped_to_the_image_range(prior):
    s = respace(prior.alphas_cumprod, 4)
    x = 5 * torch.randn(1, 3, R, R, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = posterior(prior, x, 0, s)
    assert out["variance"] == 0 and out["t"] == 0
    assert out["x0_hat"].abs().max() <= 1
    torch.testing.assert_close(out["mu"], out["x0_hat"], rtol=0, atol=1e-6)  # abar_prev = 1: the mean is x0-hat


def test_sample_refuses_a_shape_that_is_not_the_priors_images(prior):
    for shape in [(1, 1, R, R), (3, R, R)]:
        with pytest.raises(ValueError, match=r"sample needs shape \(B, 3, H, W\) for this prior"):
            sample(prior, shape, steps=2, generator=gens(0))
