"""Per-image random draws: one torch.Generator per image, so a result never depends on its batch."""

from __future__ import annotations

from typing import Sequence, Union

import torch

Generators = Union[torch.Generator, Sequence[torch.Generator]]


def image_seed(run_seed: int, image_id: str) -> int:
    """A stable 63-bit seed from (run seed, image id); the same across processes and machines."""
    import hashlib

    digest = hashlib.sha256(f"{run_seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator_for(run_seed: int, image_id: str) -> torch.Generator:
    """A CPU generator seeded from (run seed, image id): baseline and ADIR arms share it."""
    return torch.Generator("cpu").manual_seed(image_seed(run_seed, image_id))


# The per-image random streams, one per stage that draws, named once. Sampling uses the bare id (the
# stream the job used before the others existed: keeping it keeps every committed result reproducible).
STREAMS = ("degrade", "retrieval", "adaptation", "sampling")


def image_streams(seed: int, image_id: str) -> dict[str, torch.Generator]:
    """One CPU generator per stage of one image, from (run seed, image id)."""
    streams = {s: generator_for(seed, f"{image_id}#{s}") for s in STREAMS if s != "sampling"}
    streams["sampling"] = generator_for(seed, image_id)
    return streams


def as_generator_list(generator: Generators, batch: int) -> list[torch.Generator]:
    """One generator per image; a single generator is accepted only for a batch of one.

    Sharing one generator across a batch would make image i's noise depend on the
    images before it, which is exactly what per-image seeding exists to prevent.
    """
    if isinstance(generator, torch.Generator):
        if batch != 1:
            raise ValueError(
                f"got one torch.Generator for a batch of {batch} images; pass a list of "
                f"{batch} generators (one per image) so results do not depend on batch size"
            )
        return [generator]
    generators = list(generator)
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch} images; pass one per image")
    return generators


def randn_per_image(shape: Sequence[int], generator: Generators, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise of `shape` (batch first), image i drawn from generator i.

    Draws happen on the generator's device (CPU generators are the norm) and are then
    moved, so the same seed gives the same numbers whatever device the model is on.
    """
    generators = as_generator_list(generator, shape[0])
    per_image = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device=g.device) for g in generators]
    return torch.stack(per_image).to(device=device if device is not None else per_image[0].device)
