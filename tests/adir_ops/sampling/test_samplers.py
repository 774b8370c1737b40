"""Respaced DDPM sampling and ADIR's guided sampler (eq. 16) on a tiny random prior."""

import pytest
import torch

from adir_ops.physics.operators import make_operator
from adir_ops.priors.diffusion import DiffusionPrior
from adir_ops.sampling.chain import respace, sample
from adir_ops.sampling.samplers import adir_sample

R = 16


@pytest.fixture(scope="module")
def prior():
    return DiffusionPrior.tiny(resolution=R)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def smooth_images(n, size=R):
    """A deterministic smooth RGB test image, repeated n times, in [-1, 1]."""
    ramp = torch.linspace(-1, 1, size)
    img = torch.stack(
        [ramp[:, None] * ramp[None, :], ramp[:, None].expand(size, size), -ramp[None, :].expand(size, size)]
    )
    return img.expand(n, 3, size, size).contiguous()


def test_outputs_have_the_image_shape_and_range(prior):
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(2))
    x = adir_sample(prior, y, op, steps=5, generator=gens(0, 1))
    u = sample(prior, (2, 3, R, R), steps=5, generator=gens(0, 1))
    for out in (x, u):
        assert out.shape == (2, 3, R, R) and out.dtype == torch.float32
        assert out.isfinite().all() and out.min() >= -1 and out.max() <= 1


def test_same_generators_give_bit_identical_output_on_cpu(prior):
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(2))
    assert torch.equal(
        adir_sample(prior, y, op, steps=8, generator=gens(3, 4)),
        adir_sample(prior, y, op, steps=8, generator=gens(3, 4)),
    )
    assert torch.equal(
        sample(prior, (2, 3, R, R), steps=8, generator=gens(3, 4)),
        sample(prior, (2, 3, R, R), steps=8, generator=gens(3, 4)),
    )
    assert not torch.equal(
        sample(prior, (1, 3, R, R), steps=8, generator=gens(3)),
        sample(prior, (1, 3, R, R), steps=8, generator=gens(5)),
    )


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_an_image_in_a_batch_equals_the_image_sampled_alone(dtype, tol):
    """In float64 the match is exact to rounding: the sampler mixes nothing across images.

    In float32 a single batched UNet call already differs from the unbatched one by
    ~1e-6 (conv and GroupNorm kernels sum in another order per batch size); 6 steps
    carry that to a few 1e-6, hence 2e-5.
    """
    prior = DiffusionPrior.tiny(resolution=R).to(dtype)
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(torch.rand(3, 3, R, R, generator=torch.Generator().manual_seed(9), dtype=dtype) * 2 - 1)
    batch = adir_sample(prior, y, op, steps=6, generator=gens(5, 6, 7))
    plain = sample(prior, (3, 3, R, R), steps=6, generator=gens(5, 6, 7), dtype=dtype)
    assert batch.dtype == dtype
    for i in range(3):
        alone = adir_sample(prior, y[i : i + 1], op, steps=6, generator=gens(5 + i))
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=tol)
        torch.testing.assert_close(
            plain[i : i + 1],
            sample(prior, (1, 3, R, R), steps=6, generator=gens(5 + i), dtype=dtype),
            rtol=0,
            atol=tol,
        )


def test_guidance_makes_sr4_result_consistent_with_y(prior):
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(3))
    guided = adir_sample(prior, y, op, steps=50, generator=gens(0, 1, 2))
    unguided = sample(prior, (3, 3, R, R), steps=50, generator=gens(0, 1, 2))
    ratio = (op.A(guided) - y).flatten(1).norm(dim=1) / (op.A(unguided) - y).flatten(1).norm(dim=1)
    assert ratio.mean() <= 0.2, ratio


@pytest.mark.parametrize("name", ["sr4", "deblur"])
def test_a_huge_guidance_scale_never_diverges(prior, name):
    op = make_operator(name, image_size=(R, R))
    y = op.degrade(smooth_images(1), gens(0))
    clamped = []
    for scale in (1e6, float("inf")):
        x = adir_sample(
            prior,
            y,
            op,
            steps=10,
            guidance_scale=scale,
            generator=gens(1),
            callback=lambda d: clamped.append(bool(d["clamped"])),
        )
        assert x.isfinite().all() and x.abs().max() <= 1
    assert all(clamped[:9]) and not clamped[9]  # every step but the last (Sigma = 0) hits the cap


def test_callback_is_called_once_per_step_and_reports_the_clamp(prior):
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(1))
    seen = []
    adir_sample(prior, y, op, steps=7, guidance_scale=1e-3, generator=gens(0), callback=seen.append)
    assert [d["i"] for d in seen] == list(range(7))
    assert [d["t"] for d in seen] == respace(prior.alphas_cumprod, 7).timesteps.flip(0).tolist()
    for d in seen:
        assert {"x", "x_next", "x0_hat", "mu", "variance", "y_t", "guidance_step", "clamped"} <= set(d)
        assert not d["clamped"].any()
        torch.testing.assert_close(d["guidance_step"], torch.full((1,), 1e-3 * d["variance"]))
    calls = []
    sample(prior, (1, 3, R, R), steps=4, generator=gens(0), callback=calls.append)
    assert [d["i"] for d in calls] == [0, 1, 2, 3]


def test_a_capped_step_projects_onto_the_measurement_for_inpainting(prior):
    """For A A^T = I (inpainting) the cap is the exact projection onto A x = y_t."""
    op = make_operator("inpaint", image_size=(R, R))
    y = op.A(smooth_images(1))
    checked = []

    def check(d):
        if d["clamped"].all():
            mean = d["mu"] + d["guidance_step"].view(-1, 1, 1, 1) * d["g"]
            torch.testing.assert_close(op.A(mean), d["y_t"], rtol=0, atol=1e-5)
            checked.append(d["i"])

    adir_sample(prior, y, op, steps=6, guidance_scale=float("inf"), generator=gens(0), callback=check)
    assert len(checked) == 5


def test_bad_arguments_are_refused_with_the_fix(prior):
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(2))
    with pytest.raises(ValueError, match="one per image"):
        adir_sample(prior, y, op, steps=3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="diverge"):
        adir_sample(prior, y, op, steps=3, generator=gens(0, 1), max_guidance_step=2.0)
    with pytest.raises(ValueError, match=">= 0"):
        adir_sample(prior, y, op, steps=3, guidance_scale=-1.0, generator=gens(0, 1))


# ---- the samplers of the registry: eq. 16, eq. 16 preconditioned, DDNM ------------------------

from adir_ops.physics.operators import OPERATORS  # noqa: E402
from adir_ops.sampling.defaults import DEFAULT_SAMPLER_BY_TASK  # noqa: E402
from adir_ops.sampling.samplers import (  # noqa: E402
    SAMPLERS,
    adir_sample_preconditioned,
    data_consistency,
    ddnm_sample,
    get_sampler,
)


def relative_residual(op, x, y):
    return (op.A(x) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_default_sampler_is_as_consistent_as_the_truth_and_never_fits_the_noise(prior, name):
    """Noise-free: residual < 0.5%. Noisy (deblur, sigma 10/255): at the noise floor sigma sqrt(m), not below it.

    The truth's own residual is ||n||, which fluctuates around sigma sqrt(m) (relative std
    1 / sqrt(2 m), 2.6% here); the sampler targets sigma sqrt(m) itself, so it is compared
    with the larger of the two.
    """
    op = make_operator(name, image_size=(R, R))
    truth = smooth_images(2) * 0.9
    y = op.degrade(truth, gens(10, 11))
    x = get_sampler(DEFAULT_SAMPLER_BY_TASK[name])(prior, y, op, steps=10, generator=gens(0, 1))
    assert x.abs().max() <= 1
    got, own = relative_residual(op, x, y), relative_residual(op, truth, y)
    if op.noise_sigma == 0:
        assert (got < 0.005).all(), got
    else:
        floor = op.noise_radius(3) / y.flatten(1).norm(dim=1)
        assert (got <= torch.maximum(own, floor) * (1 + 1e-4)).all(), (got, own, floor)
        assert (got >= 0.97 * floor).all(), (got, floor)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_reruns_bit_identically_and_an_image_in_a_batch_equals_it_alone(sampler):
    prior64 = DiffusionPrior.tiny(resolution=R).to(torch.float64)
    op = make_operator("colorize" if sampler == "ddnm-neutral-cast" else "sr4", image_size=(R, R))
    y = op.A(torch.rand(3, 3, R, R, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2 - 1)
    f = get_sampler(sampler)
    batch = f(prior64, y, op, steps=5, generator=gens(5, 6, 7))
    assert torch.equal(batch, f(prior64, y, op, steps=5, generator=gens(5, 6, 7)))
    for i in range(3):
        torch.testing.assert_close(
            batch[i : i + 1], f(prior64, y[i : i + 1], op, steps=5, generator=gens(5 + i)), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("sampler", ["eq16-preconditioned", "ddnm"])
def test_noisy_samplers_are_batch_independent_too(prior, sampler):
    """The noise-aware projection solves for one damping per image: nothing couples the batch."""
    op = make_operator("deblur", image_size=(R, R))
    y = op.degrade(smooth_images(2), gens(3, 4))
    f = get_sampler(sampler)
    batch = f(prior, y, op, steps=4, generator=gens(1, 2))
    assert torch.equal(batch, f(prior, y, op, steps=4, generator=gens(1, 2)))
    for i in range(2):
        torch.testing.assert_close(
            batch[i : i + 1], f(prior, y[i : i + 1], op, steps=4, generator=gens(1 + i)), rtol=0, atol=2e-5
        )


def test_a_full_preconditioned_step_projects_onto_the_measurement_for_bicubic_sr(prior):
    """Bicubic SR is far from A A^T = c I, where plain eq. 16 cannot project; the preconditioned step does."""
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(1))
    checked = []

    def check(d):
        if d["variance"] > 0:
            assert d["guidance_step"].item() == 1.0
            landed = d["mu"] + d["guidance_step"].view(-1, 1, 1, 1) * (d["target"] - d["mu"])
            torch.testing.assert_close(op.A(landed), d["y_t"], rtol=0, atol=1e-5)
            checked.append(d["i"])

    adir_sample_preconditioned(prior, y, op, steps=6, generator=gens(0), callback=check)
    assert len(checked) == 5


def test_preconditioned_equals_paper_eq16_when_a_at_is_the_identity(prior):
    """Inpainting has A A^T = I: the preconditioner is the identity, the two samplers are one."""
    op = make_operator("inpaint", image_size=(R, R))
    y = op.A(smooth_images(1))
    for scale in (50.0, float("inf")):
        paper = adir_sample(prior, y, op, steps=6, guidance_scale=scale, generator=gens(0))
        pre = adir_sample_preconditioned(
            prior, y, op, steps=6, guidance_scale=scale, generator=gens(0), final_projection=False
        )
        torch.testing.assert_close(pre, paper, rtol=0, atol=1e-5)


def test_ddnm_replaces_the_range_of_x0_hat_by_the_measurement(prior):
    """Noise-free: every corrected x0-hat satisfies A x0 = y and keeps the prior's null-space part."""
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(1))
    seen = []

    def check(d):
        torch.testing.assert_close(op.A(d["x0_consistent"]), y, rtol=0, atol=1e-5)
        null_part = lambda v: v - op.pseudo_inverse(op.A(v))  # noqa: E731
        torch.testing.assert_close(null_part(d["x0_consistent"]), null_part(d["x0_hat"]), rtol=0, atol=1e-5)
        seen.append(d["i"])

    ddnm_sample(prior, y, op, steps=5, generator=gens(0), callback=check)
    assert seen == [0, 1, 2, 3, 4]


def test_noisy_ddnm_never_fits_x0_hat_below_the_noise_floor(prior):
    op = make_operator("deblur", image_size=(R, R))
    y = op.degrade(smooth_images(1), gens(0))
    radius = op.noise_radius(3)
    residuals = []
    ddnm_sample(
        prior,
        y,
        op,
        steps=6,
        generator=gens(1),
        callback=lambda d: residuals.append((op.A(d["x0_consistent"]) - y).norm().item()),
    )
    assert min(residuals) >= radius * (1 - 1e-4), (residuals, radius)


def test_data_consistency_ends_in_range_and_on_the_measurement():
    op = make_operator("colorize", image_size=(R, R))
    truth = smooth_images(2) * 0.9
    y = op.A(truth)
    start = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = data_consistency(start, y, op)
    assert out.abs().max() <= 1 and (relative_residual(op, out, y) < 1e-3).all()


def test_registry_covers_every_task_and_refuses_unknown_names():
    assert set(DEFAULT_SAMPLER_BY_TASK) == set(OPERATORS)
    assert set(DEFAULT_SAMPLER_BY_TASK.values()) <= set(SAMPLERS)
    assert get_sampler("eq16") is adir_sample
    with pytest.raises(ValueError, match="eq16, eq16-preconditioned, ddnm, ddnm-neutral-cast"):
        get_sampler("dps")


def test_ddnm_eta_one_is_the_ddpm_posterior_and_eta_zero_is_deterministic(prior):
    op = make_operator("sr4", image_size=(R, R))
    y = op.A(smooth_images(1))
    ddpm = ddnm_sample(prior, y, op, steps=5, generator=gens(0))
    # eta just below 1 takes the DDIM branch: it must land next to the DDPM posterior.
    torch.testing.assert_close(
        ddnm_sample(prior, y, op, steps=5, eta=1 - 1e-9, generator=gens(0)), ddpm, rtol=0, atol=1e-4
    )
    g1, g2 = gens(0)[0], gens(0)[0]
    torch.randn((1, 3, R, R), generator=g2)  # the same x_T, then eta = 0 draws nothing more
    a = ddnm_sample(prior, y, op, steps=5, eta=0.0, generator=[g1])
    assert g1.get_state().equal(g2.get_state()) and a.isfinite().all()
    with pytest.raises(ValueError, match="eta must be in"):
        ddnm_sample(prior, y, op, steps=2, eta=1.5, generator=gens(0))


def test_neutral_cast_keeps_the_colorization_consistent_and_cast_free(prior):
    op = make_operator("colorize", image_size=(R, R))
    y = op.A(smooth_images(2) * 0.5)
    seen = []
    x = get_sampler("ddnm-neutral-cast")(
        prior, y, op, steps=5, generator=gens(0, 1), callback=lambda d: seen.append(d["x0_consistent"])
    )
    for x0 in seen:
        mean = x0.mean(dim=(-2, -1))
        torch.testing.assert_close(mean - mean.mean(dim=1, keepdim=True), torch.zeros(2, 3), rtol=0, atol=1e-5)
        torch.testing.assert_close(op.A(x0), y, rtol=0, atol=1e-5)
    assert (relative_residual(op, x, y) < 0.005).all()
    with pytest.raises(ValueError, match="blind to a global colour shift"):
        sr4 = make_operator("sr4", image_size=(R, R))
        get_sampler("ddnm-neutral-cast")(prior, sr4.A(smooth_images(1)), sr4, steps=2, generator=gens(0))
