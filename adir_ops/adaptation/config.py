"""AdaptConfig: the settings of one LoRA adaptation (paper eq. 18), torch-free so job configs can nest it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from adir_ops.validation import short_repr

# The flattened names older job configs (and the command line's --lora-* flags) use for its fields.
FLAT_NAMES = {
    "lora_steps": "steps",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_learning_rate": "learning_rate",
    "lora_batch_size": "batch_size",
}


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of one adaptation run; the defaults are the paper's (Section 4, Guided Diffusion)."""

    lora_rank: int = 16
    lora_alpha: float = 8
    learning_rate: float = 1e-4
    steps: int = 400
    batch_size: int = 6
    # Horizontal flips of the crops: natural images are mirror-symmetric in distribution,
    # so flips double the few (K = 20..50) neighbours for free. Off by default because
    # the paper trains without them.
    hflip: bool = False

    def __post_init__(self) -> None:
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"AdaptConfig.{name} must be an integer >= {minimum}; got {short_repr(value)}")

        def positive(name: str) -> None:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"AdaptConfig.{name} must be a finite number > 0; got {short_repr(value)}")

        integer("lora_rank", 1)
        positive("lora_alpha")
        positive("learning_rate")
        integer("steps", 0)
        integer("batch_size", 1)
        if not isinstance(self.hflip, bool):
            raise ValueError(f"AdaptConfig.hflip must be True or False; got {short_repr(self.hflip)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdaptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown AdaptConfig field(s) {short_repr(unknown, 200)}; known fields: {sorted(known)}")
        return cls(**values)


def fold_flat_names(values: dict[str, Any]) -> dict[str, Any]:
    """A job config's values with any `lora_steps`-style keys folded into its nested `lora` mapping (they win)."""
    values = dict(values)
    lora = values.get("lora")
    lora = lora.to_dict() if isinstance(lora, AdaptConfig) else dict(lora or {}) if isinstance(lora, dict) else lora
    flat = {FLAT_NAMES[k]: values.pop(k) for k in list(values) if k in FLAT_NAMES}
    if flat:
        if lora is not None and not isinstance(lora, dict):
            raise ValueError(f"lora must be a mapping of AdaptConfig fields; got {short_repr(lora)}")
        lora = {**(lora or {}), **flat}
    if isinstance(lora, dict):
        values["lora"] = AdaptConfig.from_dict(lora)
    return values
