"""--precision: bf16 autocast only where the hardware multiplies bf16 (unless asked), float32 otherwise."""

import pytest
import torch

from adir_ops.priors import precision
from adir_ops.priors.denoiser import DenoiserPrior
from adir_ops.priors.precision import autocast_dtype, precision_name


def test_fp32_and_bf16_are_what_they_say_on_any_device():
    for device in (torch.device("cpu"), torch.device("cuda")):
        assert autocast_dtype("fp32", device) is None
        assert autocast_dtype("bf16", device) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert (precision_name(None), precision_name(torch.bfloat16)) == ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16; got 'half'"):
        autocast_dtype("half", torch.device("cpu"))


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, None)]
)
def test_auto_on_a_cpu_follows_its_bf16_hardware(monkeypatch, avx512_bf16, amx, expected):
    # Probing another CPU's flags is not possible here: the probe's answers are what varies.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert autocast_dtype("auto", torch.device("cpu")) is expected
    assert precision.native_bf16(torch.device("cpu")) is (expected is not None)


def test_a_bf16_denoiser_is_close_to_float32_and_returns_float32():
    prior = DenoiserPrior.tiny(resolution=16)
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = torch.tensor([100])
    exact = prior.eps(x, t)
    prior.autocast_dtype = torch.bfloat16
    approx = prior.eps(x, t)
    assert approx.dtype == torch.float32 and not torch.equal(approx, exact)
    assert (approx - exact).abs().max() < 0.05 * exact.abs().max()
