#!/bin/bash
# Colorization arms of the claim on 20 held-out images (time): the same index, seed, settings as the demo's runs.
set -e
export PYTHONPATH=/tmp/snap OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=/tmp/claim/out
mkdir -p /tmp/claim/col-inputs
$PY - <<'PYEOF'
import json, shutil
from pathlib import Path
from pipelines.demo import pick_test_images
out = Path("/tmp/claim/out")
manifest = json.loads((out / "assets" / "split.json").read_text())
for item in pick_test_images(manifest, 20):
    shutil.copyfile(out / "assets" / item["path"], Path("/tmp/claim/col-inputs") / Path(item["path"]).name)
PYEOF
for mode in baseline adir random-nn mse-nn; do
  idx="--index $OUT/index"; [ $mode = baseline ] && idx=""
  $PY -m pipelines.cli reconstruct --inputs /tmp/claim/col-inputs --out $OUT/runs/colorize-$mode --task colorize \
    --mode $mode $idx --prior ffdnet --k 20 --steps 50 --lora-steps 20 --lora-learning-rate 3e-4 --seed 0
done
# --samples 4 (issue 13 §3): the posterior mean of 4 samples beside the single sample, SR x4, no adaptation.
$PY -m pipelines.cli reconstruct --inputs /tmp/claim/col-inputs --out /tmp/claim/samples4 --task sr4 --mode baseline \
  --prior ffdnet --steps 50 --samples 4 --seed 0
