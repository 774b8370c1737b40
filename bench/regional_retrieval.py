"""Regional against whole-image retrieval on full-size photos (issue 22 §3): which neighbours adapt ADIR better, paired.

    .venv/bin/python bench/regional_retrieval.py PHOTO [PHOTO ...] [--crop 1024x640] [--region 512]
        [--arms whole,regional,baseline] [--workdir DIR] [--steps N] [--lora-steps N] [--lora-learning-rate LR]

Each photo's centre is cut at its native scale (no resizing: a full-size photo's own pixels) to --crop
and reconstructed, SR x4 with the embedded default prior and the embedded corpus's index, by one real
`adir reconstruct` per arm: `whole` (--retrieval-region 0: y queried whole), `regional`
(--retrieval-region REGION: y queried by windows, the union of their neighbours) and `baseline` (no
adaptation). ST-LPIPS comes from `adir evaluate --metrics stlpips` on each run folder.

Printed: per arm the mean PSNR and ST-LPIPS and the mean seconds of retrieval, adaptation and sampling;
the paired differences (regional - whole, and each adapted arm - baseline) with 95% t-intervals; and
what the neighbours were: how many distinct corpus photos they come from, how many come from the test
photo's own corpus crops (the embedded corpus holds every photo at thumbnail scale, so these are other
views of the same scene), and the overlap of the two arms' neighbour sets. Runs resume: the same
command with the same --workdir finishes what a stopped one left.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("whole", "regional", "baseline")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("photos", nargs="+", help="full-size photographs, larger than --crop")
    p.add_argument("--crop", default="1024x640", help="WxH cut from each photo's centre at native scale")
    p.add_argument("--region", type=int, default=512, help="the regional arm's --retrieval-region (output px)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the job's)")
    p.add_argument("--lora-steps", type=int, default=None, help="LoRA steps (default: the job's)")
    p.add_argument("--lora-learning-rate", type=float, default=None, help="LoRA learning rate (default: the job's)")
    p.add_argument("--workdir", default="regional-retrieval", help="inputs, runs and evaluations (resumable)")
    return p.parse_args(argv)


def photo_name(path: str) -> str:
    """A wallpaper's folder name (…/Path/contents/images/2560x1600.jpg -> Path), else the file's stem."""
    parts = Path(path).parts
    stem = Path(path).stem
    return parts[-4] if re.fullmatch(r"\d+x\d+", stem) and len(parts) >= 4 else stem


def cut_centre(photo: str, width: int, height: int, out_path: Path) -> None:
    from PIL import Image

    with Image.open(photo) as image:
        image = image.convert("RGB")
        if image.width < width or image.height < height:
            raise SystemExit(f"{photo} is {image.width}x{image.height}, smaller than --crop {width}x{height}")
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image.crop((left, top, left + width, top + height)).save(out_path)


def run_arm(args, arm: str, inputs: Path, out: Path) -> None:
    command = [
        sys.executable, "-m", "pipelines.cli", "reconstruct", "--inputs", str(inputs), "--out", str(out),
        "--task", "sr4", "--num-actors", "1", "--no-progress",
    ]  # fmt: skip
    if arm == "baseline":
        command += ["--mode", "baseline"]
    else:
        command += ["--mode", "adir", "--retrieval-region", str(args.region if arm == "regional" else 0)]
    if args.steps:
        command += ["--steps", str(args.steps)]
    if args.lora_steps is not None:
        command += ["--lora-steps", str(args.lora_steps)]
    if args.lora_learning_rate is not None:
        command += ["--lora-learning-rate", str(args.lora_learning_rate)]
    subprocess.run(command, cwd=ROOT, check=True)


def evaluate(run: Path, out: Path) -> dict[str, dict[str, float]]:
    """image_id -> {psnr, stlpips} of one run, from `adir evaluate`'s per_image.csv (computed once)."""
    table = out / "per_image.csv"
    if not table.exists():
        command = [sys.executable, "-m", "pipelines.cli", "evaluate", str(run), "--out", str(out)]
        subprocess.run(command + ["--metrics", "stlpips", "--no-report", "--no-progress"], cwd=ROOT, check=True)
    with open(table, newline="") as f:
        return {
            row["image_id"]: {m: float(row[m]) for m in ("psnr", "stlpips")}
            for row in csv.DictReader(f)
            if not row["error"] and row["arm"] != "plain"
        }


def main(argv=None) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from pipelines.evaluation.statistics import paired_difference

    args = parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; use some of {', '.join(ARMS)}")
    width, height = (int(v) for v in args.crop.lower().split("x"))
    work = Path(args.workdir)
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for photo in args.photos:
        target = inputs / f"{photo_name(photo)}.png"
        if not target.exists():
            cut_centre(photo, width, height, target)
    scores, rows = {}, {}
    for arm in arms:
        run_arm(args, arm, inputs, work / arm)
        scores[arm] = evaluate(work / arm, work / f"eval-{arm}")
        table = pq.read_table(work / arm / "results.parquet").to_pylist()
        rows[arm] = {r["image_id"]: r for r in table if r["error"] is None}

    print(f"\n{len(args.photos)} photos, {width}x{height} native-scale centre crops, SR x4, region {args.region} px\n")
    print("| arm | n | PSNR | ST-LPIPS | retrieval s | adaptation s | sampling s | corpus photos | own photo |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arm in arms:
        found = rows[arm].values()
        sources = [len({n.split("/")[0] for n in r["neighbour_ids"]}) for r in found]
        own = [sum(_own(r["image_id"], n) for n in r["neighbour_ids"]) for r in found]
        cells = [np.mean([s[m] for s in scores[arm].values()]) for m in ("psnr", "stlpips")]
        seconds = [
            np.mean([r.get(f"{stage}_s") or 0.0 for r in found]) for stage in ("retrieval", "adaptation", "sampling")
        ]
        print(
            f"| {arm} | {len(scores[arm])} | {cells[0]:.3f} | {cells[1]:.4f} | "
            + " | ".join(f"{s:.1f}" for s in seconds)
            + f" | {np.mean(sources) if sources[0:1] else 0:.1f} | {np.mean(own) if own[0:1] else 0:.1f} |"
        )
    pairs = [("regional", "whole"), ("whole", "baseline"), ("regional", "baseline")]
    print("\nPaired differences, mean [95% t-interval] (n):\n")
    print("| comparison | PSNR (dB, up) | ST-LPIPS (down) |")
    print("| --- | --- | --- |")
    for a, b in pairs:
        if a in scores and b in scores:
            cells = []
            for metric in ("psnr", "stlpips"):
                d = paired_difference(
                    {i: s[metric] for i, s in scores[a].items()}, {i: s[metric] for i, s in scores[b].items()}
                )
                interval = f" [{d.low:+.4f}, {d.high:+.4f}]" if d.low is not None else ""
                cells.append(f"{d.mean:+.4f}{interval} ({d.n})" if d.mean is not None else "-")
            print(f"| {a} - {b} | {cells[0]} | {cells[1]} |")
    if "whole" in rows and "regional" in rows:
        overlap = [
            len(set(rows["whole"][i]["neighbour_ids"]) & set(r["neighbour_ids"])) / max(1, len(r["neighbour_ids"]))
            for i, r in rows["regional"].items()
            if i in rows["whole"]
        ]
        print(f"\nNeighbours shared by whole and regional retrieval: {np.mean(overlap):.2f} of K on average")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def _own(image_id: str, neighbour: str) -> bool:
    """A neighbour cut from the test photo's own (thumbnail-scale) copy in the corpus: plasma-<name>/..."""
    return neighbour.split("/")[0].endswith(image_id.lower().replace("_", "-"))


if __name__ == "__main__":
    main()
