"""Retrieval quality per encoder: of a degraded test image's K neighbours, the share from its own photo and from its content class.

Run: .venv/bin/python bench/retrieval_shares.py [--encoders efficientnet-lite0,offline-content]
     [--ops clean,sr4,deblur,colorize] [--k 8,20] [--corpus-cap 4] [--threads 1] [--seed 0]

The data is the committed photo set (pipelines.photos): the held-out test crops of
`split_photos(seed)` are the queries, degraded with `adir_ops.physics.operators.make_operator(op).degrade`
(its default noise; the query is y mapped back to [0, 1], at y's own size), and the corpus is
`plan_crops`' corpus (crops of every photo, never touching a test region; so the query's own
photo is present only as other views of it). What ADIR wants from retrieval is images like the
query (paper Section 3): the own-photo share says "the same scene", the class share "the same
kind of content". "random" is the expected share of K corpus images drawn at random (the
share of the corpus from the query's photo / class), the Table 5 "random neighbours" baseline.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adir_ops.physics.operators import make_operator
from adir_ops.retrieval.embedding import get_embedder
from pipelines.photos import CropConfig, cut, load_photos, photo_classes, plan_crops, split_photos


def _batch(photos, rows, resolution: int) -> torch.Tensor:
    pixels = np.stack([cut(photos[r["photo"]], r["box"], resolution) for r in rows])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def degrade(op: str, clean: torch.Tensor, seed: int) -> torch.Tensor:
    """Queries for operator `op` ('clean' = none) in [0, 1]; image i's noise from its own generator."""
    if op == "clean":
        return clean
    operator = make_operator(op, image_size=tuple(clean.shape[-2:]))
    generators = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(clean.shape[0])]
    with torch.no_grad():
        y = operator.degrade(clean * 2 - 1, generators)
    return ((y + 1) / 2).clamp(0, 1)


def shares(neighbours: np.ndarray, query_photo, query_class, corpus_photo, corpus_class) -> tuple[float, float]:
    own = (corpus_photo[neighbours] == query_photo[:, None]).mean()
    same = (corpus_class[neighbours] == query_class[:, None]).mean()
    return float(own), float(same)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", default="efficientnet-lite0,offline-content")
    p.add_argument("--ops", default="clean,sr4,deblur,colorize")
    p.add_argument("--k", default="8,20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=24, help="held-out test photos (2 crops each)")
    p.add_argument(
        "--corpus-cap", type=int, default=4, help="corpus crops per (photo, side); the committed default is 8"
    )
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.k.split(",")]
    ops = args.ops.split(",")

    config = CropConfig(resolution=args.resolution, corpus_cap=args.corpus_cap)
    photos = load_photos()
    classes = photo_classes()
    split = split_photos(args.seed, n_test=args.n_test, config=config)
    rows = plan_crops({**split, "prior-train": []}, photos, config, seed=args.seed, classes=classes)
    test = [r for r in rows if r["set"] == "test"]
    corpus = [r for r in rows if r["set"] == "corpus"]
    clean = _batch(photos, test, args.resolution)
    corpus_pixels = _batch(photos, corpus, args.resolution)
    query_photo = np.array([r["photo"] for r in test])
    query_class = np.array([r["class"] for r in test])
    corpus_photo = np.array([r["photo"] for r in corpus])
    corpus_class = np.array([r["class"] for r in corpus])
    print(
        f"photos {len(photos)}, test photos {len(split['test'])}, queries {len(test)} per operator, "
        f"corpus crops {len(corpus)} ({config.corpus_sides} px boxes, <= {config.corpus_cap} per photo and side), "
        f"{args.threads} thread(s)"
    )

    random_own = float(np.mean([(corpus_photo == q).mean() for q in query_photo]))
    random_class = float(np.mean([(corpus_class == c).mean() for c in query_class]))
    queries = {op: degrade(op, clean, args.seed) for op in ops}

    table = []
    for name in args.encoders.split(","):
        embedder = get_embedder(name, device="cpu") if name == "efficientnet-lite0" else get_embedder(name)
        start = time.perf_counter()
        corpus_vectors = embedder.embed_images(corpus_pixels)
        rate = len(corpus) / (time.perf_counter() - start)
        print(f"{name}: corpus embedded at {rate:.1f} img/s")
        for op in ops:
            scores = embedder.embed_images(queries[op]) @ corpus_vectors.T
            order = np.argsort(-scores, axis=1, kind="stable")
            for k in ks:
                own, same = shares(order[:, :k], query_photo, query_class, corpus_photo, corpus_class)
                table.append((name, op, k, own, same))
    for op in ops:
        for k in ks:
            table.append(("random", op, k, random_own, random_class))

    print(f"\n{'encoder':<20}{'query':<10}{'K':>4}{'own photo':>11}{'x random':>10}{'class':>9}{'x random':>10}")
    for name, op, k, own, same in sorted(table, key=lambda t: (t[1] != "clean", t[1], t[2], t[0])):
        print(f"{name:<20}{op:<10}{k:>4}{own:>11.3f}{own / random_own:>10.1f}{same:>9.3f}{same / random_class:>10.2f}")
    print(f"\nrandom: own photo {random_own:.4f}, class {random_class:.3f} (expected shares of K random corpus crops)")
    encoders = [e for e in args.encoders.split(",")]
    if len(encoders) == 2:
        a, b = encoders
        for k in ks:
            for op in ops:
                ra = {t[1]: t for t in table if t[0] == a and t[2] == k}[op]
                rb = {t[1]: t for t in table if t[0] == b and t[2] == k}[op]
                print(
                    f"K={k:<3}{op:<10} {a} / {b}: own photo {ra[3] / max(rb[3], 1e-9):.2f}x, class {ra[4] / max(rb[4], 1e-9):.2f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
