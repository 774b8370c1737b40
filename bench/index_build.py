"""Benchmark: images/s of the whole Ray Data index build vs the encoder's bare forward, and peak RSS by corpus size.

    python bench/index_build.py                      # 2k and 20k synthetic JPEGs, the default encoder
    python bench/index_build.py --sizes 500 --cpus 2 # a quick look

The bare forward embeds the same decoded batches (same batch size, same encoder, the
job's thread count) with no I/O, decode or Ray, so job/bare shows what reading, decoding
and orchestration cost; it is timed just before and just after each job.
Each size runs in its own process (peak RSS is per process); RSS is sampled over that
process and every Ray process it started. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def make_corpus(folder: str, n: int, width: int, height: int, seed: int = 0) -> None:
    """n distinct smooth JPEGs (quality 90); existing files are kept, so a bigger size reuses a smaller one."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = os.path.join(folder, f"{i:07d}.jpg")
        grid = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # drawn even when the file exists: same images
        if not os.path.exists(path):
            Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)


def vm_hwm_mib() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries that across fork+exec,
    so a child started by a parent holding the bare forward's model reported the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


GROUP_ORDER = ("driver", "embed actor", "read tasks", "Ray's own processes")  # most specific first


def process_group(cmdline: str, is_driver: bool) -> str:
    """Which part of the job a process is, from its title (Ray renames a worker by what it runs)."""
    if is_driver:
        return "driver"
    if "EmbedBatch" in cmdline:
        return "embed actor"
    if "read_batch" in cmdline or cmdline.startswith("ray::IDLE"):  # a read worker between two tasks is IDLE
        return "read tasks"
    return "Ray's own processes"


class RssSampler:
    """Every `interval` s: the peak RSS of this process + its descendants, this process's own RSS over
    time, and each process's CPU seconds by part of the job (driver, embed actor, read tasks, Ray's own)."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.root, self.interval, self.peak = psutil.Process(), interval, 0
        self.driver: list[tuple[float, int]] = []  # (perf_counter, this process's RSS)
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (group, CPU seconds at its last sample)
        self._driver_cpu_at_start = sum(self.root.cpu_times()[:2])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds per group since the sampler started (a process counts up to its last sample)."""
        groups: dict[str, float] = {}
        for pid, (group, seconds) in self._cpu.items():
            start = self._driver_cpu_at_start if pid == self.root.pid else 0.0
            groups[group] = groups.get(group, 0.0) + seconds - start
        return groups

    def _run(self):
        while not self._stop.is_set():
            total = 0
            try:
                self.driver.append((time.perf_counter(), self.root.memory_info().rss))
            except Exception:
                pass
            for p in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                    # A worker starts as ray::IDLE and is renamed by what it runs: keep the most specific name seen.
                    seen = self._cpu.get(p.pid, ("Ray's own processes", 0.0))[0]
                    now = process_group(" ".join(p.cmdline()), p.pid == self.root.pid)
                    group = min(seen, now, key=GROUP_ORDER.index)
                    self._cpu[p.pid] = (group, sum(p.cpu_times()[:2]))
                except Exception:  # a worker that exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bare_forward(
    corpus: str, n: int, embedder_name: str, batch_size: int, threads: int, repeats: int = 3
) -> tuple[float, float]:
    """(images/s, CPU cores busy) of embed_images alone on the first n corpus images, decoded as the reader does."""
    import torch

    from adir_ops.retrieval.embedding import get_embedder
    from index_builder.reader import decode_image

    embedder = get_embedder(embedder_name)
    names = sorted(os.listdir(corpus))[:n]
    pixels = np.stack(
        [decode_image(open(os.path.join(corpus, f), "rb").read(), embedder.image_size)[0] for f in names]
    )
    batches = [torch.from_numpy(pixels[i : i + batch_size]) for i in range(0, n, batch_size)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        embedder.embed_images(batches[0].permute(0, 3, 1, 2).float() / 255)  # warm-up
        best, cores = float("inf"), 0.0
        for _ in range(repeats):  # best of `repeats`: the machine may be shared
            start, cpu = time.perf_counter(), time.process_time()
            for batch in batches:  # the same uint8 -> float conversion the embed actor does
                embedder.embed_images(batch.permute(0, 3, 1, 2).float().div_(255.0))
            seconds = time.perf_counter() - start
            if seconds < best:
                best, cores = seconds, (time.process_time() - cpu) / seconds
        return n / best, cores
    finally:
        torch.set_num_threads(previous)


def one_size(args) -> dict:
    """Run the job for one corpus size in this process; return its figures."""
    import ray

    from adir_ops.retrieval.embedding import get_embedder
    from index_builder import BuildConfig, run_build
    from index_builder.embed_stage import actor_resources

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="warning")
    out = tempfile.mkdtemp(prefix=f"adir-bench-index-{args.one}-")
    config = BuildConfig(
        args.corpus,
        out,
        embedder=args.embedder,
        shard_size=args.shard_size,
        limit=args.one,
        batch_size=args.batch_size,
        progress=False,
        **({"read_nice": args.read_nice} if args.read_nice is not None else {}),
    )
    actors = actor_resources(config)["compute"].max_size
    try:
        from index_builder.embed_stage import actor_threads

        threads = actor_threads(config, actor_resources(config))
    except ImportError:  # the job before per-stage figures (to bench an older checkout): threads = its reservation
        threads = max(1, int(actor_resources(config)["num_cpus"]))
    with RssSampler() as sampler:
        start = time.perf_counter()
        report = run_build(config)
        seconds = time.perf_counter() - start
    ray.shutdown()
    subprocess.run(["rm", "-rf", out], check=False)
    stages = getattr(report, "stages", {})
    # The driver's peak before the FAISS build: what streaming the shards costs. The build then holds
    # the index itself (for Flat and IVF-Flat, count x dim x 4 bytes), which grows with N by design.
    embedding_ends = start + seconds - getattr(report, "index_seconds", 0.0)
    embed_phase = [rss for t, rss in sampler.driver if t <= embedding_ends]
    return {
        "images": args.one,
        "job_s": seconds,
        "job_img_s": args.one / seconds,
        "startup_s": getattr(report, "startup_seconds", None) or float("nan"),
        "steady_img_s": getattr(report, "steady_rate", None) or float("nan"),
        "embed_busy_s": stages["embed"].busy_seconds if stages else float("nan"),
        "actors": actors,
        "actor_threads": threads,
        "stage_table": report.stage_table() if stages else "(no per-stage figures in this checkout)",
        "count": report.count,
        "driver_peak_mib": vm_hwm_mib(),
        "driver_embed_peak_mib": max(embed_phase, default=0) / 2**20,
        "index_mib": (report.count or 0) * get_embedder(args.embedder).dim * 4 / 2**20,
        "index_s": getattr(report, "index_seconds", float("nan")),
        "tree_peak_mib": sampler.peak / 2**20,
        "cpu_seconds": sampler.cpu_seconds(),
    }


def main(argv=None) -> int:
    from adir_ops.retrieval.embedding import DEFAULT_EMBEDDER

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2000,20000", help="comma-separated corpus sizes")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--image-px", default="320x240", help="synthetic JPEG size WxH")
    p.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "adir-bench-corpus"))
    p.add_argument("--bare-images", type=int, default=256, help="images for each bare-forward timing")
    p.add_argument("--one-thread", action="store_true", help="also time the bare forward on 1 thread")
    p.add_argument("--read-nice", type=int, default=None, help="BuildConfig.read_nice (default: the job's own rule)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one size
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args)))
        return 0

    from adir_ops.allocator import keep_freed_memory

    # As the embed actors do: with ADIR_KEEP_FREED_MEMORY=0 both the actors and this bare forward run without it.
    print(f"keep freed memory (adir_ops/allocator.py): {keep_freed_memory()}")
    sizes = [int(s) for s in args.sizes.split(",")]
    width, height = (int(v) for v in args.image_px.split("x"))
    corpus = os.path.join(args.corpus, f"{width}x{height}")
    start = time.perf_counter()
    make_corpus(corpus, max(sizes), width, height)
    print(f"corpus: {max(sizes)} JPEGs {width}x{height} in {corpus} ({time.perf_counter() - start:.0f} s to prepare)")
    bare_n = min(args.bare_images, max(sizes))
    if args.one_thread:
        bare_1, _ = bare_forward(corpus, bare_n, args.embedder, args.batch_size, threads=1)
        print(f"bare forward on 1 thread ({bare_n} images, best of 3): {bare_1:.1f} img/s")
    print(f"bare forward: {args.embedder}, batch {args.batch_size}, {bare_n} images, best of 3")
    rows = []
    for n in sizes:
        # Bare forward on the job's thread count just before and just after the job: the machine is shared.
        before, before_cores = bare_forward(corpus, bare_n, args.embedder, args.batch_size, threads=args.cpus)
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--one",
            str(n),
            "--corpus",
            corpus,
            "--embedder",
            args.embedder,
            "--batch-size",
            str(args.batch_size),
            "--shard-size",
            str(args.shard_size),
            "--cpus",
            str(args.cpus),
            *(["--read-nice", str(args.read_nice)] if args.read_nice is not None else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        r = json.loads(done.stdout.strip().splitlines()[-1])
        after, after_cores = bare_forward(corpus, bare_n, args.embedder, args.batch_size, threads=args.cpus)
        bare = (before + after) / 2
        print(
            f"\n{n} images, actor threads {r['actor_threads']}; bare forward on {args.cpus} threads: "
            f"{before:.1f} img/s before the job, {after:.1f} after, on {before_cores:.2f} / {after_cores:.2f} CPU cores"
        )
        print(r["stage_table"])
        cores = {group: seconds / r["job_s"] for group, seconds in sorted(r["cpu_seconds"].items())}
        print(
            f"CPU cores in use over the job, of {args.cpus}: "
            + ", ".join(f"{group} {used:.2f}" for group, used in cores.items())
            + f"; total {sum(cores.values()):.2f}"
        )
        rows.append((n, r, bare))
    print(
        f"\n{'images':>7} {'job s':>7} {'start s':>7} {'job img/s':>9} {'steady img/s':>12} {'bare img/s':>10} "
        f"{'job/bare':>8} {'steady/bare':>11} {'fwd img/s':>9} {'fwd/bare':>8} {'fwd share':>9} "
        f"{'driver embed MiB':>16} {'driver peak MiB':>15} {'index MiB':>9} {'index s':>7} {'all procs MiB':>13}"
    )
    for n, r, bare in rows:
        forward = n / (r["embed_busy_s"] / r["actors"])  # the actors' own forward, in the job
        print(
            f"{n:>7} {r['job_s']:>7.1f} {r['startup_s']:>7.1f} {r['job_img_s']:>9.2f} {r['steady_img_s']:>12.2f} "
            f"{bare:>10.2f} {r['job_img_s'] / bare:>8.2f} {r['steady_img_s'] / bare:>11.2f} {forward:>9.2f} "
            f"{forward / bare:>8.2f} {r['job_img_s'] / forward:>9.2f} {r['driver_embed_peak_mib']:>16.0f} "
            f"{r['driver_peak_mib']:>15.0f} {r['index_mib']:>9.0f} {r['index_s']:>7.1f} {r['tree_peak_mib']:>13.0f}"
        )
    print(
        "job s: run_build after ray.init (listing, Ray Data read/decode/embed, Parquet shards, FAISS index). "
        "start s: run start to the first forward; steady: images/s from the first forward to the end. "
        "bare: mean of the bare forward (best of 3) just before and just after that job, on the job's thread count. "
        "fwd: the embed actors' own forward rate in the job (images per busy second per actor); fwd share = job img/s "
        "over it (what reading, orchestration and start-up cost, immune to the load changing between the bare timing "
        "and the job). driver embed: the driver's peak RSS until the FAISS build; driver peak: its VmHWM over the whole "
        "run, which includes the index (index MiB = vectors x dim x 4 bytes, the size of a Flat or IVF-Flat index). "
        "'all procs' sums RSS over the driver and its Ray processes (object-store pages mapped by several may count twice)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
