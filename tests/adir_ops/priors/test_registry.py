"""DiffusionPrior: the tiny test prior, the diffusers round trip, the Guided Diffusion loader and the PRIORS registry."""

import pytest
import torch

from adir_ops.priors.diffusion import DiffusionPrior, linear_betas
from adir_ops.priors.guided_diffusion import GUIDED_DIFFUSION_256_UNCOND, guided_diffusion_unet
from adir_ops.priors.registry import (
    HUB_ID,
    PRIORS,
    TINY_RESOLUTION,
    format_prior,
    load_local_prior,
    parse_prior,
    tiny_resolution,
)

# A Guided Diffusion UNet of the real class and block layout, small enough for a test.
SMALL_GD = {
    "image_size": 32,
    "model_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": (1, 2),
    "attention_resolutions": (16,),
    "num_head_channels": 32,
}


def noisy_batch(n=2, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_tiny_prior_is_a_few_thousand_parameter_diffusers_unet():
    from diffusers import UNet2DModel

    prior = DiffusionPrior.tiny(resolution=16)
    assert isinstance(prior.unet, UNet2DModel) and prior.kind == "diffusers"
    assert 1_000 <= sum(p.numel() for p in prior.unet.parameters()) <= 20_000
    assert prior.betas.dtype == torch.float64 and prior.num_train_timesteps == 1000
    with torch.no_grad():
        eps = prior.eps(noisy_batch(), torch.tensor([10, 900]))
    assert eps.shape == (2, 3, 16, 16) and eps.isfinite().all()


def test_tiny_prior_is_the_same_for_the_same_seed():
    a, b = DiffusionPrior.tiny(seed=3), DiffusionPrior.tiny(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.unet.parameters(), b.unet.parameters()))


def test_save_pretrained_then_from_diffusers_gives_identical_eps(tmp_path):
    prior = DiffusionPrior.tiny(resolution=16, seed=1)
    prior.save_pretrained(str(tmp_path / "prior"))
    loaded = DiffusionPrior.from_diffusers(str(tmp_path / "prior"))
    x, t = noisy_batch(), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(loaded.eps(x, t), prior.eps(x, t))
    torch.testing.assert_close(loaded.alphas_cumprod, prior.alphas_cumprod, rtol=1e-6, atol=0)
    assert (loaded.resolution, loaded.channels) == (16, 3)


def test_default_architecture_is_deepinvs_diffunet_of_openais_256_uncond():
    from deepinv.models import DiffUNet

    with torch.device("meta"):  # shapes only: no 2 GB of weights
        ours = guided_diffusion_unet(**GUIDED_DIFFUSION_256_UNCOND)
        theirs = DiffUNet(large_model=True, pretrained=None)
    assert type(ours) is DiffUNet
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    theirs_shapes = {
        k: v.shape
        for k, v in theirs.state_dict().items()
        if k not in ("sqrt_alphas_cumprod", "sqrt_1m_alphas_cumprod")
    }
    assert ours_shapes == theirs_shapes
    assert sum(p.numel() for p in ours.parameters()) == 552_814_086


def small_gd_checkpoint(path, seed=0):
    """A small Guided Diffusion UNet with every weight random (its output conv starts at zero)."""
    unet = guided_diffusion_unet(**SMALL_GD)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    torch.save(unet.state_dict(), path)
    return unet


def test_guided_diffusion_checkpoint_loads_through_the_real_loader(tmp_path):
    path = tmp_path / "small_gd.pt"
    unet = small_gd_checkpoint(path)
    prior = DiffusionPrior.from_guided_diffusion(str(path), **SMALL_GD)
    assert prior.kind == "guided-diffusion" and (prior.resolution, prior.channels) == (32, 3)
    assert torch.equal(prior.betas, linear_betas(1000))
    x, t = noisy_batch(size=32), torch.tensor([5, 800])
    with torch.no_grad():
        eps = prior.eps(x, t)
        # Integer timesteps go to OpenAI's timestep path; the variance channels are dropped.
        assert torch.equal(eps, unet.forward_diffusion(x, t)[:, :3])
        assert not torch.allclose(prior.eps(x, torch.tensor([6, 801])), eps)
    assert eps.shape == (2, 3, 32, 32) and eps.abs().max() > 0
    assert prior.config["architecture"]["model_channels"] == 32


def test_guided_diffusion_missing_file_names_the_checkpoint_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="256x256_diffusion_uncond.pt"):
        DiffusionPrior.from_guided_diffusion(str(tmp_path / "nope.pt"))


def test_guided_diffusion_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "small_gd.pt"
    small_gd_checkpoint(path)
    with pytest.raises(ValueError, match="does not match the Guided Diffusion UNet.*missing"):
        DiffusionPrior.from_guided_diffusion(str(path), **{**SMALL_GD, "num_res_blocks": 2})
    state = torch.load(path, weights_only=True)
    state["label_emb.weight"] = torch.zeros(1000, 128)  # the class-conditional model's extra key
    torch.save(state, path)
    with pytest.raises(ValueError, match="1 unexpected.*label_emb"):
        DiffusionPrior.from_guided_diffusion(str(path), **SMALL_GD)
    with pytest.raises(TypeError, match="unknown Guided Diffusion architecture argument"):
        DiffusionPrior.from_guided_diffusion(str(path), channels=3)


def test_guided_diffusion_loader_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "hook": print}, path)
    with pytest.raises(Exception, match="(?i)weights_only"):
        DiffusionPrior.from_guided_diffusion(str(path), **SMALL_GD)


def test_autocast_runs_the_unet_in_16_bits_and_returns_the_input_dtype():
    prior = DiffusionPrior.tiny(resolution=16)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    full = prior.eps(x, t)
    prior.autocast_dtype = torch.bfloat16
    half = prior.eps(x, t)
    assert half.dtype == torch.float32
    # bf16 keeps ~3 significant digits: close to the fp32 prediction, but not equal to it.
    assert not torch.equal(half, full)
    assert torch.allclose(half, full, atol=0.1, rtol=0.05)


# -- the registry: every kind that builds a DiffusionPrior loads from a local target ----------------------
def _diffusers_folder(tmp_path):
    DiffusionPrior.tiny(resolution=16, seed=2).save_pretrained(str(tmp_path / "prior"))
    return str(tmp_path / "prior"), {}


def _gd_checkpoint(tmp_path):
    small_gd_checkpoint(tmp_path / "small_gd.pt")
    return f"gd256:{tmp_path / 'small_gd.pt'}", SMALL_GD


# What each kind is tested with: tmp_path -> (spec, Guided Diffusion architecture overrides).
TEST_SPECS = {
    "default": lambda tmp_path: ("default", {}),
    "unet64": lambda tmp_path: ("unet64", {}),
    "ffdnet": lambda tmp_path: ("ffdnet", {}),
    "tiny": lambda tmp_path: ("tiny:16", {}),
    "gd256": _gd_checkpoint,
    "auto": _diffusers_folder,
}
BUILDABLE = sorted(kind for kind, entry in PRIORS.items() if entry.build is not None)


@pytest.mark.parametrize("kind", BUILDABLE)
def test_every_buildable_kind_loads_and_predicts_eps(kind, tmp_path):
    if kind not in TEST_SPECS:
        pytest.fail(f"prior kind {kind!r} is in PRIORS but has no entry in TEST_SPECS: add how to test it")
    spec, arch = TEST_SPECS[kind](tmp_path)
    prior = load_local_prior(spec, **arch)
    assert isinstance(prior, DiffusionPrior) and prior.num_train_timesteps == 1000
    x = noisy_batch(size=prior.resolution)[:, : prior.channels]
    with torch.no_grad():
        # A denoiser prior holds on its trained noise range only (valid_timesteps), a UNet on all 1000 steps.
        eps = prior.eps(x, torch.tensor([10, min(900, prior.valid_timesteps - 1)]))
    assert eps.shape == x.shape and eps.dtype == x.dtype and eps.isfinite().all()


def test_the_registry_forms_and_flags():
    assert set(BUILDABLE) == set(TEST_SPECS)
    assert [kind for kind, entry in PRIORS.items() if entry.test_only] == ["tiny"]
    forms = {kind: entry.form for kind, entry in PRIORS.items()}
    assert forms == {
        "default": "default",
        "unet64": "unet64",
        "ffdnet": "ffdnet[:PATH]",
        "tiny": "tiny[:RES]",
        "gd256": "gd256:PATH",
        "sd-x4": "sd-x4:WHERE",
        "auto": "PATH",
    }
    assert load_local_prior("tiny").resolution == TINY_RESOLUTION and load_local_prior("tiny:8").resolution == 8


def test_the_plain_path_form_tells_a_checkpoint_from_a_folder(tmp_path):
    small_gd_checkpoint(tmp_path / "small_gd.pt")
    assert load_local_prior(str(tmp_path / "small_gd.pt"), **SMALL_GD).kind == "guided-diffusion"
    folder, _ = _diffusers_folder(tmp_path)
    x, t = noisy_batch(), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(load_local_prior(folder).eps(x, t), DiffusionPrior.tiny(resolution=16, seed=2).eps(x, t))


def test_remote_weights_are_read_only_through_localize(tmp_path):
    # adir_ops never touches remote storage: a URL is refused, and a caller's localize() turns it into a path.
    with pytest.raises(ValueError, match="names no local weights.*localize="):
        load_local_prior("gd256:s3://bucket/gd.pt")
    with pytest.raises(ValueError, match="names no local weights"):
        load_local_prior("s3://bucket/prior")
    small_gd_checkpoint(tmp_path / "small_gd.pt")
    seen = []
    prior = load_local_prior(
        "gd256:s3://bucket/gd.pt", localize=lambda url: seen.append(url) or str(tmp_path / "small_gd.pt"), **SMALL_GD
    )
    assert seen == ["s3://bucket/gd.pt"] and prior.kind == "guided-diffusion"


@pytest.mark.parametrize("spec", ["clip:ViT-B-32", "gd265:/models/gd.pt", "default:x", "auto:/x", ""])
def test_unknown_spec_names_the_known_kinds(spec):
    with pytest.raises(ValueError, match="unknown prior spec") as err:
        load_local_prior(spec)
    assert all(entry.form in str(err.value) for entry in PRIORS.values())


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("default", ("default", "")),
        ("unet64", ("unet64", "")),
        ("tiny", ("tiny", "")),
        ("tiny:8", ("tiny", "8")),
        ("ffdnet", ("ffdnet", "")),
        ("ffdnet:/w/ffdnet_color.pth", ("ffdnet", "/w/ffdnet_color.pth")),
        ("gd256:s3://b/gd.pt", ("gd256", "s3://b/gd.pt")),
        ("sd-x4:stabilityai/stable-diffusion-x4-upscaler", ("sd-x4", "stabilityai/stable-diffusion-x4-upscaler")),
        ("org/name", ("auto", "org/name")),
        ("s3://bucket/prior", ("auto", "s3://bucket/prior")),
        ("/models/unet", ("auto", "/models/unet")),
    ],
)
def test_the_grammar_reads_every_form_and_writes_it_back(spec, parsed):
    assert parse_prior(spec) == parsed and format_prior(*parsed) == spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tiny:big", "integer resolution"),
        ("tiny:", "integer resolution"),
        ("gd256:", "names no weights; give gd256:PATH"),
        ("sd-x4", "names no weights; give sd-x4:WHERE"),
        ("unet64:/x", "unknown prior spec"),
        ("clip:ViT-B-32", "unknown prior spec"),
        ("", "unknown prior spec"),
    ],
)
def test_the_grammar_refuses_what_no_loader_takes(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_prior(spec)


def test_a_path_with_a_colon_is_the_plain_form_only_where_it_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run:1").mkdir()
    assert parse_prior("run:1") == ("auto", "run:1")
    with pytest.raises(ValueError, match="unknown prior spec 'run:2'"):
        parse_prior("run:2")


def test_tiny_resolutions_and_hub_ids():
    assert tiny_resolution("tiny") == TINY_RESOLUTION and tiny_resolution("tiny:8") == 8
    assert tiny_resolution("unet64") is None
    assert HUB_ID.match("stabilityai/stable-diffusion-x4-upscaler") and HUB_ID.match("org/name.v2")
    assert not any(HUB_ID.match(path) for path in ("./models/x", "../x/y", "a/b/c", "name"))


def test_misused_kinds_say_what_to_do_instead():
    with pytest.raises(ValueError, match="Stable Diffusion x4 upscaler.*load_pipeline.*not a DiffusionPrior"):
        load_local_prior("sd-x4:tiny")
    with pytest.raises(ValueError, match="integer resolution"):
        load_local_prior("tiny:big")
    with pytest.raises(ValueError, match="names no weights"):
        load_local_prior("gd256:")
    with pytest.raises(TypeError, match="takes no architecture arguments"):
        load_local_prior("tiny", image_size=32)
