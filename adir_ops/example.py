"""A first example that runs: degrade a packaged photo, adapt a prior on a few images, reconstruct it.

    python -m adir_ops.example --task sr4 --out example-out

Writes ground_truth / input / naive (bicubic or plain restoration) / no-adaptation / adir
PNGs and metrics.json (the resolved config beside the PSNR/SSIM of each). With no --prior,
the embedded default prior (FFDNet read as a diffusion prior) is used; `--prior tiny` is a random-weight prior for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

# Photos that ship with scikit-image: the observed image and, by default, the "neighbours"
# the prior is adapted on (given, not retrieved: retrieval needs an index, see `adir index`).
DEFAULT_PHOTO = "astronaut"
DEFAULT_NEIGHBOURS = ("chelsea", "coffee", "rocket", "immunohistochemistry")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from adir_ops.physics.operators import OPERATORS

    p = argparse.ArgumentParser(prog="python -m adir_ops.example", description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(OPERATORS), default="sr4")
    p.add_argument("--photo", default=DEFAULT_PHOTO, help="a skimage.data photo name or an image file path")
    p.add_argument(
        "--neighbours",
        nargs="*",
        default=list(DEFAULT_NEIGHBOURS),
        help="images to adapt on: skimage.data names or file paths",
    )
    p.add_argument(
        "--prior",
        default="default",
        help="a prior spec of adir_ops.priors.registry.PRIORS: 'default' (the embedded default), 'unet64', a diffusers "
        "UNet2DModel folder, or 'tiny' (random weights: mechanics only, for tests)",
    )
    p.add_argument("--tiny-resolution", type=int, default=32, help="resolution of the tiny random prior")
    p.add_argument("--steps", type=int, default=50, help="respaced sampling steps")
    p.add_argument("--guidance-scale", type=float, default=None, help="eq. 16 scale s (default: the sampler's)")
    p.add_argument("--lora-steps", type=int, default=None, help="LoRA iterations (default: AdaptConfig's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="example-out")
    return p.parse_args(argv)


def load_image(name_or_path: str):
    """A (3, H, W) float tensor in [0, 1] from a skimage.data name or an image file."""
    import numpy as np
    import torch

    if os.path.exists(name_or_path):
        from PIL import Image

        array = np.asarray(Image.open(name_or_path).convert("RGB"))
    else:
        import skimage.data

        loader = getattr(skimage.data, name_or_path, None)
        if loader is None:
            raise ValueError(f"{name_or_path!r} is neither an image file nor a skimage.data photo (e.g. 'astronaut')")
        array = loader()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return torch.from_numpy(np.array(array[..., :3])).permute(2, 0, 1).float() / 255.0


def center_square(image, size: int):
    """Largest centred square, resized to size x size (antialiased): the prior's native resolution."""
    import torch.nn.functional as F

    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[:, top : top + side, left : left + side].unsqueeze(0)
    return F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)[0]


def save_png(image01, path: str) -> None:
    import numpy as np
    from PIL import Image

    array = (image01.clamp(0, 1) * 255).round().to("cpu").byte()
    array = array.expand(3, -1, -1) if array.shape[0] == 1 else array
    Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy())).save(path)


def main(argv: list[str] | None = None) -> int:
    from adir_ops.adaptation.config import AdaptConfig
    from adir_ops.metrics import quality
    from adir_ops.physics.operators import make_operator
    from adir_ops.pipeline import pipeline_for
    from adir_ops.priors.diffusion import DiffusionPrior
    from adir_ops.priors.precision import set_precision
    from adir_ops.priors.registry import load_local_prior
    from adir_ops.retrieval.arms import GivenNeighbours, NoNeighbours
    from adir_ops.rng import image_streams
    from adir_ops.sampling.config import SamplerConfig

    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.prior == "tiny":
        print(
            "--prior tiny: a RANDOM-WEIGHT prior. This run shows the mechanics "
            "(degrade → adapt → guided sampling → metrics), not image quality."
        )
        prior = DiffusionPrior.tiny(resolution=args.tiny_resolution)
    else:
        prior = load_local_prior(args.prior)
    set_precision(prior)  # the job's default ('auto'): the same pixels as `adir reconstruct` on this machine
    size = prior.resolution

    truth = center_square(load_image(args.photo), size).unsqueeze(0)  # (1, 3, S, S) in [0, 1]
    operator = make_operator(args.task, image_size=(size, size))
    # The image id, as the dataset job names it (a file's stem): the same id gives the same random streams.
    image_id = os.path.splitext(os.path.basename(args.photo))[0] if os.path.exists(args.photo) else args.photo
    y = operator.degrade(truth * 2 - 1, image_streams(args.seed, image_id)["degrade"])
    adapt_config = AdaptConfig() if args.lora_steps is None else AdaptConfig(steps=args.lora_steps)

    # One pipeline per arm, the same seed and image id: the same degradation and sampler noise, so
    # the two diffusion results differ by the adaptation alone (exactly as the Ray job's arms do).
    sampler = SamplerConfig(
        steps=args.steps, **({} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale})
    )
    plain = pipeline_for(prior, NoNeighbours(), sampler=sampler)(y, operator, seed=args.seed, image_id=image_id)
    given = GivenNeighbours(list(args.neighbours))
    adir = pipeline_for(
        prior,
        given,
        adaptation=adapt_config,
        sampler=sampler,
        fetch=lambda names: [load_image(n) * 2 - 1 for n in names],
    )
    adapted = adir(y, operator, seed=args.seed, image_id=image_id)
    adapter = adapted.adapter
    adapter.save(os.path.join(args.out, "adapter.safetensors"))
    timings = {"sampling_s": plain.timings["sampling_s"], "adaptation_s": adapted.timings["adaptation_s"]}
    results = {"naive": plain.naive01, "no_adaptation": plain.image01, "adir": adapted.image01}
    save_png(truth[0], os.path.join(args.out, "ground_truth.png"))
    save_png(y[0].add(1).div(2).clamp(0, 1), os.path.join(args.out, "input.png"))
    metrics = {}
    for arm, image in results.items():
        save_png(image[0], os.path.join(args.out, f"{arm}.png"))
        result = quality.compute_metrics(image, truth, names=("psnr", "ssim"))
        metrics[arm] = {**result.rows()[0], **{f"{name}_unavailable": why for name, why in result.unavailable.items()}}

    report = {
        "config": {
            "args": vars(args),
            "prior": prior.config,
            "operator": {"name": operator.name, "noise_sigma": operator.noise_sigma, "image_size": [size, size]},
            "adaptation": dataclasses.asdict(adapt_config),
            "sampling": adapted.config["sampler"],
        },
        "metrics": metrics,
        "timings": timings,
        "final_lora_loss": adapter.losses[-1] if adapter.losses else None,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    for arm, values in metrics.items():
        print(
            f"{arm:>14}: "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        )
    print(f"Wrote ground_truth/input/naive/no_adaptation/adir PNGs and metrics.json to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
