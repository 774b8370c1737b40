"""Full-size cost of `adir reconstruct`: seconds per megapixel per stage, peak memory per process, quality.

    .venv/bin/python bench/full_size.py PHOTO [PHOTO ...] [--sizes 0.4,2.8,12] [--steps 100] [--mode baseline]

Each photo is resized (Lanczos, aspect kept) to each size in megapixels of the *output* (the ground truth
the job degrades), then one real `adir reconstruct` run per size (the default prior, the task's defaults)
goes through the command line on a local Ray cluster. While it runs, the resident memory of every process
of the job (the driver and each Ray actor, found by their command lines) is sampled every 0.2 s. Printed per
size: s/MP of each stage from results.parquet, the whole run's wall s/MP, sampling's distance from the
compute limit (sampling s/MP over a bare forward of the prior's network per MP x steps: 1.0 would mean the
sampler costs nothing but its network), the peak RSS of the driver and of the largest actor, PSNR of the
reconstruction and of the naive inverse (bicubic, ...) and their difference.

Full-size photographs come from a Debian package (no root needed):
    apt-get download plasma-workspace-wallpapers && dpkg-deb -x plasma-workspace-wallpapers*.deb wp
    # then e.g. wp/usr/share/wallpapers/*/contents/images/5120x2880.png (14.7 MP photographs)
Timings on a shared machine are noisy: say how loaded it was when you quote them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SAMPLE_S = 0.2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("photos", nargs="+", help="photographs at least as large as the largest size")
    p.add_argument("--sizes", default="0.4,2.8,12", help="output sizes in megapixels, comma-separated")
    p.add_argument("--task", default="sr4")
    p.add_argument("--mode", default="baseline", help="adir needs an index (the default one is built on first use)")
    p.add_argument("--steps", type=int, default=None, help="respaced steps (default: the job's default)")
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument(
        "--sampling-region", type=int, default=None, help="the job's --sampling-region (default: its default)"
    )
    p.add_argument("--precision", default=None, help="the job's --precision (default: its default, auto)")
    p.add_argument("--workdir", default=None, help="where inputs and outputs go (default: a temp dir)")
    return p.parse_args(argv)


def resize_to(photo: str, megapixels: float, out_path: str) -> tuple[int, int]:
    """`photo` resized to about `megapixels` (never upscaled), sides a multiple of 8 so every task divides."""
    from PIL import Image

    with Image.open(photo) as image:
        image = image.convert("RGB")
        scale = min(1.0, (megapixels * 1e6 / (image.width * image.height)) ** 0.5)
        width, height = (max(8, int(side * scale) // 8 * 8) for side in image.size)
        image.resize((width, height), Image.LANCZOS).save(out_path)
    return width, height


class PeakMemory:
    """Peak RSS of the driver (`pid`) and of the largest Ray actor, sampled in a thread while the job runs."""

    def __init__(self, pid: int):
        self.pid, self.driver, self.actor = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            for process in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                info = process.info
                rss = info["memory_info"].rss if info["memory_info"] else 0
                if info["pid"] == self.pid:
                    self.driver = max(self.driver, rss)
                elif any("ReconstructionWorker" in part for part in info["cmdline"] or ()):
                    self.actor = max(self.actor, rss)
            self._stop.wait(SAMPLE_S)


def forward_s_per_mp(threads: int, precision: str, side: int = 704, repeats: int = 3) -> float:
    """Seconds per megapixel of one bare forward of the default prior (its eps, no guidance, no tiling).

    Timed here, in the bench's process, with the actor's thread count and precision: sampling time over
    (this x steps) says how far the sampler is from the compute limit of its network.
    """
    import torch

    from adir_ops.priors.precision import set_precision
    from adir_ops.priors.registry import load_local_prior

    torch.set_num_threads(threads)
    prior = set_precision(load_local_prior("default"), precision)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), prior.valid_timesteps // 2, dtype=torch.long)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):  # the first pays one-time costs; the fastest is the machine's limit
            start = time.perf_counter()
            prior.eps(x, t)
            best = min(best, time.perf_counter() - start)
    return best / (side * side / 1e6)


def run_one(args, inputs: str, out: str) -> tuple[float, PeakMemory]:
    command = [
        sys.executable, "-m", "pipelines.cli", "reconstruct", "--inputs", inputs, "--out", out,
        "--task", args.task, "--mode", args.mode, "--num-actors", str(args.num_actors), "--no-progress",
    ]  # fmt: skip
    if args.steps:
        command += ["--steps", str(args.steps)]
    if args.sampling_region is not None:
        command += ["--sampling-region", str(args.sampling_region)]
    if args.precision is not None:
        command += ["--precision", args.precision]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with PeakMemory(process.pid) as peak:
        code = process.wait()
    if code:
        raise SystemExit(f"adir reconstruct exited {code} on {inputs}")
    return time.perf_counter() - start, peak


def main(argv=None) -> None:
    import pyarrow.parquet as pq
    import yaml

    from cluster.pool import DEFAULT_CPU_SHARE, actor_threads
    from cluster.results import STAGES

    args = parse_args(argv)
    sizes = [float(size) for size in args.sizes.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="adir-full-size-")
    gib = 2**30
    print(f"task {args.task}, mode {args.mode}, steps {args.steps or 'default'}, {args.num_actors} actor(s), "
          f"{os.cpu_count()} CPUs; os.getloadavg() at start: {os.getloadavg()[0]:.1f}")  # fmt: skip
    # The actors' threads as the job sets them (cluster.pool.actor_threads), for the compute limit.
    threads = actor_threads({"CPU": float(os.cpu_count())}, {"num_cpus": DEFAULT_CPU_SHARE}, args.num_actors) or 1
    precision = args.precision or "auto"
    forward = forward_s_per_mp(threads, precision)
    print(f"bare forward of the default prior: {forward:.2f} s/MP on {threads} thread(s), precision {precision}")
    header = [
        "MP",
        "wall s/MP",
        *[f"{s} s/MP" for s in STAGES],
        "sampling / (forward x steps)",
        "driver GiB",
        "actor GiB",
        "PSNR",
        "naive",
        "gain",
        "precision",
    ]
    print(" | ".join(header))
    for size in sizes:
        inputs = os.path.join(work, f"inputs-{size}")
        os.makedirs(inputs, exist_ok=True)
        pixels = 0
        for i, photo in enumerate(args.photos):
            width, height = resize_to(photo, size, os.path.join(inputs, f"photo{i:02d}.png"))
            pixels += width * height
        wall, peak = run_one(args, inputs, os.path.join(work, f"out-{size}"))
        rows = pq.read_table(os.path.join(work, f"out-{size}", "results.parquet")).to_pylist()
        mp = pixels / 1e6
        stage = [sum(row[f"{s}_s"] or 0.0 for row in rows) / mp for s in STAGES]
        psnr = sum(row["psnr"] for row in rows) / len(rows)
        naive = sum(row["naive_psnr"] for row in rows) / len(rows)
        steps = yaml.safe_load(open(os.path.join(work, f"out-{size}", "config.yaml")))["steps"]
        cells = [f"{mp / len(rows):.2f}", f"{wall / mp:.1f}", *[f"{v:.1f}" for v in stage]]
        cells += [
            f"{stage[STAGES.index('sampling')] / (forward * steps):.2f}",
            f"{peak.driver / gib:.2f}",
            f"{peak.actor / gib:.2f}",
            f"{psnr:.2f}",
            f"{naive:.2f}",
            f"{psnr - naive:+.2f}",
            ",".join(sorted({str(row.get("precision")) for row in rows})),
        ]
        print(" | ".join(cells), flush=True)
    print(f"os.getloadavg() at end: {os.getloadavg()[0]:.1f}; outputs in {work}")


if __name__ == "__main__":
    main()
