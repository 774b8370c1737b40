"""GPU figures for the real-model setups (issue 6), random weights only: sampler steps/s, LoRA it/s, batched LoRA (G vs 1), FAISS flat search, OpenCLIP images/s.

    bench/gpu_check.sh              # one GPU, full sizes, under 8 minutes
    bench/gpu_check.sh --dry-run    # tiny sizes on the CPU: checks the script itself in seconds

Full sizes: the Guided Diffusion 256x256_diffusion_uncond UNet (552.8M parameters, random
weights) in ADIR's eq. 16 sampler (SR x4) at 256 px, batch 1 and 8; LoRA (rank 16, all
convs, batch 6, 256 px crops) on it; exact inner-product search of 100 queries (k = 50) in
1.7M x 512 fp16 random vectors (faiss-gpu's GpuIndexFlatIP with fp16 storage, or a torch
fp16 matmul + top-k when faiss has no GPU); ViT-B-32 image embedding (random weights,
224 px). On CUDA the sampler and LoRA run under bf16 autocast (fp32 LoRA master weights),
as the project does on GPU. Printed figures only; rerun before quoting.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FULL = {
    "gd": None,  # GUIDED_DIFFUSION_256_UNCOND
    "size": 256,
    "batches": (1, 8),
    "sampler_steps": (20, 8),
    "lora_steps": 8,
    "lora_batch": 6,
    "groups": (1, 4),
    "faiss_n": 1_700_000,
    "faiss_dim": 512,
    "queries": 100,
    "k": 50,
    "clip": "ViT-B-32",
    "clip_batch": 256,
    "clip_batches": 4,
}
DRY = {
    "gd": {
        "image_size": 32,
        "model_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": (1, 2),
        "attention_resolutions": (16,),
        "num_head_channels": 32,
    },
    "size": 32,
    "batches": (1, 2),
    "sampler_steps": (3, 2),
    "lora_steps": 2,
    "lora_batch": 2,
    "groups": (1, 2),
    "faiss_n": 20_000,
    "faiss_dim": 512,
    "queries": 100,
    "k": 50,
    "clip": "adir-tiny",
    "clip_batch": 8,
    "clip_batches": 2,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script, no figures worth quoting)"
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available; --dry-run: cpu)")
    p.add_argument(
        "--precision",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="autocast dtype (default bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--only", default="sampler,lora,batched,faiss,embed", help="comma-separated parts to run")
    return p.parse_args(argv)


class Clock:
    """Wall time of a block with the device drained before and after (CUDA runs asynchronously)."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start


def autocast(device, precision):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def build_gd_prior(sizes, device):
    import torch

    from adir_ops.priors.diffusion import DiffusionPrior, linear_betas
    from adir_ops.priors.guided_diffusion import GUIDED_DIFFUSION_256_UNCOND, guided_diffusion_unet

    arch = sizes["gd"] or GUIDED_DIFFUSION_256_UNCOND
    with torch.device(device):  # initialise on the device: 552M parameters init in seconds on a GPU
        unet = guided_diffusion_unet(**arch)
    prior = DiffusionPrior(unet, linear_betas(1000), resolution=arch["image_size"], kind="guided-diffusion")
    return prior.to(device).eval(), sum(p.numel() for p in unet.parameters())


def bench_sampler(prior, params, sizes, device, precision, log):
    import torch

    from adir_ops.physics.operators import make_operator
    from adir_ops.sampling.samplers import adir_sample

    size = sizes["size"]
    operator = make_operator("sr4", image_size=(size, size)).to(device)
    for batch, steps in zip(sizes["batches"], sizes["sampler_steps"]):
        clean = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        y = operator.A(clean.to(device))
        generators = [torch.Generator().manual_seed(i) for i in range(batch)]
        with autocast(device, precision):
            adir_sample(prior, y, operator, steps=2, generator=generators)  # warm-up: kernels, allocator
            with Clock(device) as clock:
                adir_sample(prior, y, operator, steps=steps, generator=generators)
        rate = steps / clock.seconds
        log(
            f"sampler  GD UNet {params / 1e6:.1f}M params, {size} px, adir_sample sr4, batch {batch}: "
            f"{rate:.2f} steps/s ({rate * batch:.1f} image-steps/s, {steps} steps in {clock.seconds:.2f} s)"
        )


def bench_lora(prior, sizes, device, precision, log):
    import torch

    from adir_ops.adaptation.config import AdaptConfig
    from adir_ops.adaptation.lora import lora_targets
    from adir_ops.adaptation.training import adapt

    size, steps = sizes["size"], sizes["lora_steps"]
    neighbours = (
        torch.rand(20, 3, size + size // 4, size + size // 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    )
    stamps = []
    config = AdaptConfig(steps=steps + 1, batch_size=sizes["lora_batch"])
    clock = Clock(device)

    def tick(step, loss):  # float(loss) in adapt's callback already waits for the step
        stamps.append(time.perf_counter())

    with autocast(device, precision):
        adapter = adapt(prior, neighbours.to(device), config, torch.Generator().manual_seed(2), callback=tick)
    clock.sync()
    # The first step pays for kernel selection and allocation: time the others.
    rate = steps / (stamps[-1] - stamps[0])
    dtypes = {t.dtype for t in adapter.state_dict.values()}
    log(
        f"LoRA     rank {config.lora_rank} on {len(lora_targets(prior.unet))} convs, batch {config.batch_size}, "
        f"{size} px crops: {rate:.2f} it/s (LoRA weights {', '.join(str(d) for d in dtypes)}, final loss {adapter.losses[-1]:.4f})"
    )


def bench_batched(prior, sizes, device, precision, log):
    """Batched adaptation (adapt_many): G images' LoRAs in one forward, images/s against G = 1 (issue 14)."""
    import torch

    from adir_ops.adaptation.config import AdaptConfig
    from adir_ops.adaptation.training import adapt_many

    size, steps = sizes["size"], sizes["lora_steps"]
    config = AdaptConfig(steps=steps, batch_size=sizes["lora_batch"])
    clock = Clock(device)
    base = None
    for groups in sizes["groups"]:
        sets = [
            torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(g)).to(device) * 2 - 1
            for g in range(groups)
        ]
        generators = [torch.Generator().manual_seed(10 + g) for g in range(groups)]
        with autocast(device, precision):
            adapt_many(prior, sets, AdaptConfig(steps=1, batch_size=config.batch_size), generators)  # warm-up
            clock.sync()
            start = time.perf_counter()
            adapt_many(prior, sets, config, generators)
            clock.sync()
        rate = groups / (time.perf_counter() - start)
        base = base or rate
        log(
            f"batched  LoRA G={groups}, {steps} steps of batch {config.batch_size} per image: "
            f"{rate:.3f} images/s ({rate / base:.2f}x G=1)"
        )


def bench_faiss(sizes, device, log):
    import faiss
    import numpy as np
    import torch

    n, dim, nq, k = sizes["faiss_n"], sizes["faiss_dim"], sizes["queries"], sizes["k"]
    g = torch.Generator(device=device).manual_seed(3)
    queries = torch.nn.functional.normalize(torch.randn(nq, dim, generator=g, device=device), dim=1)
    gpu_faiss = device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    chunk = 100_000
    start = time.perf_counter()
    if gpu_faiss:
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = True
        config.device = device.index or 0
        index = faiss.GpuIndexFlatIP(resources, dim, config)
        kind = "faiss GpuIndexFlatIP, fp16 storage"
    elif device.type == "cuda":
        index = None
        kind = "torch fp16 matmul + top-k (faiss has no GPU here; install faiss-gpu-cu12 for GpuIndexFlatIP)"
        store = torch.empty(n, dim, dtype=torch.float16, device=device)
    else:
        index = faiss.IndexFlatIP(dim)  # CPU: no fp16 flat kernel; fp32 storage
        faiss.cvar.distance_compute_blas_threshold = 1000
        kind = "faiss-cpu IndexFlatIP, fp32 storage"
    for lo in range(0, n, chunk):
        block = torch.nn.functional.normalize(torch.randn(min(chunk, n - lo), dim, generator=g, device=device), dim=1)
        if index is None:
            store[lo : lo + len(block)] = block.half()
        else:
            index.add(np.ascontiguousarray(block.cpu().numpy()))
    clock = Clock(device)
    clock.sync()
    add_s = time.perf_counter() - start
    q = queries.cpu().numpy()
    times = []
    for _ in range(6):
        with clock:
            if index is None:
                scores, rows = torch.topk(queries.half() @ store.T, k, dim=1)
            else:
                scores, rows = index.search(q, k)
        times.append(clock.seconds)
    best, median = min(times[1:]), sorted(times[1:])[len(times[1:]) // 2]
    log(
        f"FAISS    flat inner product, {n:,} x {dim} ({kind}), {nq} queries, k={k}: "
        f"{median * 1e3:.2f} ms per query batch (best {best * 1e3:.2f} ms; filling the index took {add_s:.1f} s)"
    )


def bench_embed(sizes, device, precision, log):
    import torch

    from adir_ops.retrieval.embedding import get_embedder

    embedder = get_embedder(f"openclip:{sizes['clip']}", device=device)
    s, batch = embedder.image_size, sizes["clip_batch"]
    images = torch.rand(batch, 3, s, s, generator=torch.Generator().manual_seed(4)).to(device)
    with autocast(device, precision):
        embedder.embed_images(images)  # warm-up
        with Clock(device) as clock:
            for _ in range(sizes["clip_batches"]):
                embedder.embed_images(images)
    rate = batch * sizes["clip_batches"] / clock.seconds
    log(f"embed    OpenCLIP {sizes['clip']} (random weights), {s} px, batch {batch}: {rate:.1f} images/s")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    t0 = time.perf_counter()
    sizes = DRY if args.dry_run else FULL
    device = torch.device(args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"))
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"sampler", "lora", "batched", "faiss", "embed"}
    if unknown:
        raise SystemExit(f"unknown --only part(s) {sorted(unknown)}; choose from sampler, lora, batched, faiss, embed")

    def log(line):
        print(line, flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    log(
        f"gpu_check{' --dry-run (tiny sizes: not figures to quote)' if args.dry_run else ''}: {name}, torch {torch.__version__}, "
        f"autocast {precision}"
    )
    if not args.dry_run and device.type != "cuda":
        log("warning: no CUDA device; full sizes on the CPU take far longer than 8 minutes (use --dry-run)")
    if parts & {"sampler", "lora", "batched"}:
        prior, params = build_gd_prior(sizes, device)
        if "sampler" in parts:
            bench_sampler(prior, params, sizes, device, precision, log)
        if "lora" in parts:
            bench_lora(prior, sizes, device, precision, log)
        if "batched" in parts:
            bench_batched(prior, sizes, device, precision, log)
        del prior
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "faiss" in parts:
        bench_faiss(sizes, device, log)
    if "embed" in parts:
        bench_embed(sizes, device, precision, log)
    if device.type == "cuda":
        log(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    log(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
