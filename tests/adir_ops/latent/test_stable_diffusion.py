"""Stable Diffusion with ADIR on tiny random pipelines of the real classes: loading, latent adaptation, upscaling, editing."""

import os
import time

import pytest
import torch

from adir_ops.adaptation.adapter import Adapter
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.latent.editing import EditConfig, adapt_inpainting, edit, random_masks
from adir_ops.latent.stable_diffusion import load_pipeline, tiny_pipeline
from adir_ops.latent.upscale import UpscaleConfig, adapt_upscaler, upscale

LORA = AdaptConfig(steps=4, batch_size=2, learning_rate=1e-2)
UPSCALE = UpscaleConfig(lora=LORA, crop_size=32, steps=3)
EDIT = EditConfig(lora=LORA, crop_size=32, steps=3)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def upscaler():
    return tiny_pipeline("sd-x4")


@pytest.fixture(scope="module")
def inpainter():
    return tiny_pipeline("sd-inpaint")


@pytest.fixture(scope="module")
def neighbours():
    return torch.rand(5, 3, 40, 56, generator=gen(0)) * 2 - 1


def unet_state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def stock_upscale(pipe, y01, seed, config=UPSCALE):
    return pipe(
        prompt=config.prompt,
        image=y01,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        noise_level=config.noise_level,
        generator=gen(seed),
        output_type="pt",
    ).images


# ---------------------------------------------------------------- the tiny pipelines and the loader
def test_tiny_pipelines_are_the_real_classes_and_depend_on_the_seed_alone():
    from diffusers import (
        AutoencoderKL,
        StableDiffusionInpaintPipeline,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    up, again, inpaint = tiny_pipeline("sd-x4"), tiny_pipeline("sd-x4"), tiny_pipeline("sd-inpaint")
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG stream is untouched
    assert isinstance(up, StableDiffusionUpscalePipeline) and isinstance(inpaint, StableDiffusionInpaintPipeline)
    for pipe in (up, inpaint):
        assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
        assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert (up.unet.config.in_channels, inpaint.unet.config.in_channels) == (7, 9)
    assert (up.vae_scale_factor, inpaint.vae_scale_factor) == (4, 8)  # the real models' factors
    assert up.scheduler.config.prediction_type == "v_prediction"
    assert all(torch.equal(a, b) for a, b in zip(up.unet.parameters(), again.unet.parameters()))
    ids = up.tokenizer("a red cat").input_ids
    assert (
        ids[0] == up.tokenizer.bos_token_id and ids[-1] == up.tokenizer.eos_token_id and len(ids) == 2 + len("aredcat")
    )  # bytes only: one token per character


def test_a_saved_pipeline_folder_loads_through_the_real_loader_and_gives_the_same_image(tmp_path, upscaler):
    upscaler.save_pretrained(str(tmp_path / "sd-x4"))
    loaded = load_pipeline("sd-x4", str(tmp_path / "sd-x4"))
    assert type(loaded) is type(upscaler)
    y = torch.rand(1, 3, 8, 8, generator=gen(1))
    assert torch.equal(upscale(loaded, y, UPSCALE, gen(2)), upscale(upscaler, y, UPSCALE, gen(2)))


@pytest.mark.parametrize(
    "kind, hub_id",
    [
        ("sd-x4", "stabilityai/stable-diffusion-x4-upscaler"),
        ("sd-inpaint", "stabilityai/stable-diffusion-2-inpainting"),
    ],
)
def test_missing_weights_fail_fast_naming_what_to_download(tmp_path, monkeypatch, kind, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may even try the network
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"does not exist.*hf download {hub_id} --local-dir"):
        load_pipeline(kind, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        load_pipeline(kind, str(tmp_path / "empty"))
    with pytest.raises(
        FileNotFoundError, match=f"not in the local Hugging Face cache and the hub is offline.*hf download {hub_id}"
    ):
        load_pipeline(kind, hub_id)
    assert time.perf_counter() - start < 10


def test_a_folder_missing_a_component_fails_with_the_download_hint(tmp_path, inpainter):
    inpainter.save_pretrained(str(tmp_path / "inpaint"))
    for name in os.listdir(tmp_path / "inpaint" / "unet"):
        os.remove(tmp_path / "inpaint" / "unet" / name)
    with pytest.raises(FileNotFoundError, match="incomplete.*hf download"):
        load_pipeline("sd-inpaint", str(tmp_path / "inpaint"))


# ---------------------------------------------------------------- SD x4 upscaler
def test_upscale_without_adapter_is_the_stock_pipeline_and_pads_odd_sizes(upscaler):
    y = torch.rand(1, 3, 8, 12, generator=gen(3))
    assert torch.equal(upscale(upscaler, y, UPSCALE, gen(4)), stock_upscale(upscaler, y, 4))
    odd = torch.rand(2, 3, 9, 11, generator=gen(5))
    out = upscale(upscaler, odd, UPSCALE, [gen(6), gen(7)])
    assert out.shape == (2, 3, 36, 44) and 0 <= float(out.min()) and float(out.max()) <= 1
    # Image i depends on its own generator only, not on the batch.
    assert torch.equal(out[1:], upscale(upscaler, odd[1:], UPSCALE, [gen(7)]))


def test_upscaler_adaptation_conditions_on_A_of_the_crop_and_leaves_the_unet_untouched(upscaler):
    seen = []
    hook = upscaler.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True
    )
    constant = torch.full((3, 3, 48, 40), 0.3)  # A of a constant image is that constant
    before = unet_state(upscaler)
    try:
        adapter = adapt_upscaler(upscaler, constant, UpscaleConfig(lora=LORA, crop_size=32, noise_level=0), gen(0))
    finally:
        hook.remove()
    assert len(seen) == LORA.steps
    (unet_in, t), kwargs = seen[0]
    assert unet_in.shape == (2, 7, 8, 8)  # 32 px crops -> 8 px latents and 8 px low-res condition
    # noise_level 0 is the low-res scheduler's t = 0: a 0.01-std noise remains.
    abar = float(upscaler.low_res_scheduler.alphas_cumprod[0])
    residual = (unet_in[:, 4:] - abar**0.5 * 0.3) / (1 - abar) ** 0.5
    assert abs(float(residual.mean())) < 0.3 and 0.7 < float(residual.std()) < 1.3
    assert torch.equal(kwargs["class_labels"], torch.zeros(2, dtype=torch.long)) and t.unique().numel() == 1
    assert all(torch.equal(v, before[k]) for k, v in upscaler.unet.state_dict().items())
    assert adapter.prior_config["kind"] == "sd-x4-upscaler" and len(adapter.losses) == LORA.steps
    assert adapter.targets and all(
        isinstance(upscaler.unet.get_submodule(t), torch.nn.Conv2d) for t in adapter.targets
    )


def test_adapted_upscaler_changes_the_output_and_loads_back_with_load_lora_weights(tmp_path, neighbours):
    pipe = tiny_pipeline("sd-x4")
    adapter = adapt_upscaler(pipe, neighbours, UPSCALE, gen(1))
    y = torch.rand(1, 3, 8, 8, generator=gen(2))
    plain = upscale(pipe, y, UPSCALE, gen(3))
    adapted = upscale(pipe, y, UPSCALE, gen(3), adapter=adapter)
    assert (adapted - plain).abs().max() > 1e-3
    assert torch.equal(upscale(pipe, y, UPSCALE, gen(3)), plain)  # the block restored the UNet
    # Same generator, same adapter; a fresh LoRA (no steps) is the identity.
    again = adapt_upscaler(pipe, neighbours, UPSCALE, gen(1))
    assert all(torch.equal(again.state_dict[k], v) for k, v in adapter.state_dict.items())
    untrained = adapt_upscaler(
        pipe, neighbours, UpscaleConfig(lora=AdaptConfig(steps=0), crop_size=32, steps=3), gen(1)
    )
    assert torch.equal(upscale(pipe, y, UPSCALE, gen(3), adapter=untrained), plain)
    # diffusers format: the stock pipeline's own loader gives the same image as adapter.applied.
    path = tmp_path / "pytorch_lora_weights.safetensors"
    adapter.save(str(path))
    assert Adapter.load(str(path)).prior_config["upscale_config"]["crop_size"] == 32
    pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
    torch.testing.assert_close(stock_upscale(pipe, y, 3), adapted, atol=1e-6, rtol=0)


def test_bf16_autocast_adaptation_keeps_fp32_lora_weights(upscaler, neighbours):
    config = UpscaleConfig(
        lora=AdaptConfig(steps=2, batch_size=2, learning_rate=1e-2), crop_size=32, mixed_precision="bf16"
    )
    adapter = adapt_upscaler(upscaler, neighbours, config, gen(8))
    assert all(v.dtype == torch.float32 for v in adapter.state_dict.values())
    assert all(torch.isfinite(torch.tensor(adapter.losses)))
    assert any(v.abs().max() > 0 for k, v in adapter.state_dict.items() if "lora_B" in k)  # it trained


def test_upscale_config_refuses_bad_values(upscaler, neighbours):
    with pytest.raises(ValueError, match="multiple of 4"):
        UpscaleConfig(crop_size=30)
    with pytest.raises(ValueError, match="mixed_precision"):
        UpscaleConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="max_noise_level 350"):
        upscale(upscaler, torch.rand(1, 3, 8, 8), UpscaleConfig(noise_level=400), gen(0))
    with pytest.raises(ValueError, match="multiple of 8"):
        adapt_upscaler(upscaler, neighbours, UpscaleConfig(lora=LORA, crop_size=36), gen(0))


# ---------------------------------------------------------------- SD inpainting (editing)
def test_random_masks_follow_sd_inpainting_training():
    masks = random_masks(400, 32, gen(0), full_mask_probability=0.25)
    full = (masks.flatten(1).min(dim=1).values == 1).float().mean()
    assert 0.18 < float(full) < 0.32
    partial = masks[masks.flatten(1).min(dim=1).values == 0]
    assert set(masks.unique().tolist()) == {0.0, 1.0} and (partial.flatten(1).mean(dim=1) > 0).all()
    assert torch.equal(random_masks(3, 32, gen(1)), random_masks(3, 32, gen(1)))


def test_inpainting_adaptation_feeds_masks_masked_latents_and_drops_the_prompt(inpainter, neighbours):
    seen = []
    hook = inpainter.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True
    )
    from adir_ops.latent.stable_diffusion import prompt_embeddings

    cond, uncond = prompt_embeddings(inpainter, ["a red cat", ""]).split(1)
    try:
        for dropout in (0.0, 1.0):
            adapt_inpainting(
                inpainter, neighbours, "a red cat", EditConfig(lora=LORA, crop_size=32, prompt_dropout=dropout), gen(0)
            )
    finally:
        hook.remove()
    assert len(seen) == 2 * LORA.steps
    (unet_in, _), kwargs = seen[0]
    assert unet_in.shape == (2, 9, 4, 4)  # 32 px crops, VAE factor 8
    assert set(unet_in[:, 4].unique().tolist()) <= {0.0, 1.0}  # the mask at latent size
    assert torch.equal(kwargs["encoder_hidden_states"], cond.expand(2, -1, -1))
    assert torch.equal(seen[-1][1]["encoder_hidden_states"], uncond.expand(2, -1, -1))


def test_edit_without_adapter_is_the_stock_pipeline_and_adaptation_changes_it(tmp_path, neighbours):
    pipe = tiny_pipeline("sd-inpaint")
    image = torch.rand(1, 3, 32, 40, generator=gen(1))
    mask = torch.zeros(1, 1, 32, 40)
    mask[..., 8:24, 10:30] = 1
    plain = edit(pipe, image, mask, "a red cat", EDIT, gen(2))
    stock = pipe(
        prompt="a red cat",
        image=image,
        mask_image=mask,
        height=32,
        width=40,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=gen(2),
        output_type="pt",
    ).images
    assert torch.equal(plain, stock)
    adapter = adapt_inpainting(pipe, neighbours, "a red cat", EDIT, gen(3))
    other_prompt = adapt_inpainting(pipe, neighbours, "a blue house", EDIT, gen(3))
    assert any(not torch.equal(v, other_prompt.state_dict[k]) for k, v in adapter.state_dict.items())
    adapted = edit(pipe, image, mask, "a red cat", EDIT, gen(2), adapter=adapter)
    assert (adapted - plain).abs().max() > 1e-3
    # Odd sizes are padded and cropped back.
    odd = edit(pipe, image[..., :30, :37], mask[..., :30, :37], "a red cat", EDIT, gen(2))
    assert odd.shape == (1, 3, 30, 37)
    adapter.save(str(tmp_path / "pytorch_lora_weights.safetensors"))
    pipe.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors")
    loaded = pipe(
        prompt="a red cat",
        image=image,
        mask_image=mask,
        height=32,
        width=40,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=gen(2),
        output_type="pt",
    ).images
    torch.testing.assert_close(loaded, adapted, atol=1e-6, rtol=0)


def test_inpainting_adaptation_refuses_a_non_inpainting_unet(upscaler, neighbours):
    with pytest.raises(ValueError, match="inpainting UNet takes 9"):
        adapt_inpainting(upscaler, neighbours, "a cat", EDIT, gen(0))
