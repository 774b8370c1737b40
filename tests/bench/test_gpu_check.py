"""bench/gpu_check.sh --dry-run: the GPU check script runs end to end at tiny sizes on the CPU and prints every figure."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(240)
FIGURES = {
    "sampler": [r"sampler .* batch 1: ([\d.]+) steps/s", r"sampler .* batch 2: ([\d.]+) steps/s"],
    "lora": [r"LoRA .*: ([\d.]+) it/s \(LoRA weights torch\.float32"],
    "batched": [r"batched  LoRA G=1,.*: ([\d.]+) images/s \(1\.00x", r"batched  LoRA G=2,.*: ([\d.]+) images/s"],
    "faiss": [r"FAISS .*20,000 x 512.*100 queries, k=50: ([\d.]+) ms per query batch"],
    "embed": [r"embed .*: ([\d.]+) images/s"],
}


def run_check(*flags):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def assert_figures(out, parts):
    for part in parts:
        for pattern in FIGURES[part]:
            match = re.search(pattern, out)
            assert match and float(match.group(1)) > 0, f"{pattern} missing from:\n{out}"


def test_dry_run_prints_every_figure():
    out = run_check()
    assert_figures(out, FIGURES)
    assert "autocast fp32" in out and re.search(r"total [\d.]+ s", out)


def test_dry_run_under_bf16_autocast_keeps_fp32_lora_weights():
    out = run_check("--precision", "bf16", "--only", "sampler,lora")
    assert_figures(out, ["sampler", "lora"])
    assert "autocast bf16" in out and "FAISS" not in out
