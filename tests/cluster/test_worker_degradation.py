"""`--degradation auto`: the job estimates each degraded photo's operator, records the estimate in its row, refuses clean inputs."""

import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cluster.config import ReconstructConfig
from cluster.run_folder import check_previous_run, write_config
from cluster.worker import ReconstructionWorker
from pipelines.inputs import list_inputs
from tests.adir_ops.physics.test_estimate import _degrade, _photo
from tests.cluster.helpers import job_options

pytestmark = pytest.mark.timeout(300)


def _write(y01: torch.Tensor, path) -> None:
    Image.fromarray((y01[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def test_the_row_records_the_estimated_noise_and_kernel(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _write(_degrade(_photo(side=64), "deblur", 5, kernel="gaussian", width=1.6), folder / "blurred.png")
    config = ReconstructConfig(
        inputs=str(folder),
        out=str(tmp_path / "out"),
        degraded=True,
        degradation="auto",
        **job_options(task="deblur", mode="baseline"),
    )
    row = ReconstructionWorker(config).process(list_inputs(str(folder), task="deblur", degraded=True)[0])
    assert row["error"] is None, row["error"]
    assert abs(row["noise_sigma_est"] - 5) < 2
    family, width = row["kernel_est"].split(":")
    estimate = json.loads(row["degradation_estimate"])
    assert (estimate["kernel"]["family"], estimate["kernel"]["width"]) == (family, float(width))
    assert estimate["noise"]["sigma_255"] == row["noise_sigma_est"]
    assert row["degradation_unsure"] == (estimate["kernel"]["unsure"] or estimate["noise"]["unsure"])


def test_auto_needs_degraded_inputs_and_an_older_run_folder_still_resumes(tmp_path):
    common = dict(inputs=str(tmp_path / "in"), out=str(tmp_path / "out"), task="sr4", mode="baseline")
    with pytest.raises(ValueError, match="--degradation auto .* add --degraded"):
        ReconstructConfig(**common, degradation="auto")
    with pytest.raises(ValueError, match="--degradation must be one of known, auto"):
        ReconstructConfig(**common, degraded=True, degradation="blind")
    # A run folder written before the option existed has no `degradation` key: it is the default, "known".
    write_config(ReconstructConfig(**common))
    path = os.path.join(common["out"], "config.yaml")
    values = yaml.safe_load(open(path).read())
    values.pop("degradation")
    open(path, "w").write(yaml.safe_dump(values))
    check_previous_run(ReconstructConfig(**common))
    with pytest.raises(ValueError, match=r"degradation: 'known' -> 'auto'"):
        check_previous_run(ReconstructConfig(**common, degraded=True, degradation="auto"))
