"""Each degraded input's ground truth under --reference, by name: DIV2K's `0801x4.png` ↔ `0801.png`, or the same name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from adir_ops.physics.tasks import TASKS

# DIV2K, Flickr2K and RealSR name a low-resolution file after its ground truth plus the scale: 0801x4.png.
# Only the scales those sets ship, so that a name like "box5" keeps its last character.
_SCALE_SUFFIX = re.compile(r"(.+?)[xX]([2348])")
SCALE_MISMATCH = "its name says x"  # how match() opens the why of an input named for another scale


def scale_suffix(image_id: str) -> tuple[str, int] | None:
    """("0801", 4) for DIV2K's "0801x4" (also x2, x3, x8, upper-case X); None for a name without one."""
    match = _SCALE_SUFFIX.fullmatch(image_id)
    return (match.group(1), int(match.group(2))) if match else None


def degraded_id(image_id: str, factor: int) -> str:
    """The id of a degraded input: its name less the task's scale suffix (0801x4 is 0801 for x4), else its name."""
    found = scale_suffix(image_id)
    return found[0] if found and found[1] == factor else image_id


@dataclass
class References:
    """The ground truths listed under --reference: which one each degraded input pairs with, or why none does.

    `files` maps an id to every file listed with it: one usable file (why is None) is a pair; two files
    (0801.png and 0801.jpg) or a file that cannot be read are refused by name, never guessed between.
    """

    url: str
    files: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)

    @classmethod
    def listed(cls, url: str, usable: list[tuple[str, str]], unusable: list[tuple[str, str, str]]) -> References:
        """From a listing's (id, uri) pairs and its (id, uri, why) entries that cannot be read."""
        refs = cls(url)
        for image_id, uri in usable:
            refs.files.setdefault(image_id, []).append((uri, None))
        for image_id, uri, why in unusable:
            refs.files.setdefault(image_id, []).append((uri, why))
        return refs

    def match(self, image_id: str, factor: int) -> tuple[str, str | None, str | None]:
        """(the input's id, its ground truth's URI, None), or (its id, None, why there is none and the fix).

        `image_id` is the input's own name (below --inputs, no extension). An input named like its ground
        truth pairs with it; with a scale factor, so does DIV2K's NAMEx4 with NAME. The id is the ground
        truth's name, so that outputs and rows are named like the HR files.
        """
        names = self.candidates(image_id, factor)
        found = [(name, uri, why) for name in reversed(names) for uri, why in self.files.get(name, [])]
        if len(found) == 1 and found[0][2] is None:
            return found[0][0], found[0][1], None
        own_id, suffix = degraded_id(image_id, factor), scale_suffix(image_id)
        if len(found) > 1:
            why = (
                f"{len(found)} ground truths in --reference {self.url} could pair with it "
                f"({', '.join(uri for _, uri, _ in found)}); keep one of them there (rename or move the others)"
            )
        elif found:
            why = f"its ground truth {found[0][1]} cannot be read ({found[0][2].split(';')[0]})"
        elif suffix and suffix[1] != factor and suffix[0] in self.files:
            scale = suffix[1]
            task = (
                f"--task sr{scale}" if f"sr{scale}" in TASKS else f"a task for x{scale} (adir has {', '.join(TASKS)})"
            )
            if factor == 1:
                why = f"{SCALE_MISMATCH}{scale} but this task keeps the image size; for x{scale} inputs pass {task}"
            else:
                why = (
                    f"{SCALE_MISMATCH}{scale} but this task upsamples x{factor}; pass --inputs the X{factor} folder "
                    f"(e.g. DIV2K_valid_LR_bicubic/X{factor}), or {task}"
                )
        else:
            why = (
                f"no ground truth named {' or '.join(names)} in --reference {self.url}; "
                "add it there, or leave --reference out to reconstruct without metrics"
            )
        return own_id, None, why

    @staticmethod
    def candidates(image_id: str, factor: int) -> list[str]:
        """The ground-truth names an input may pair with: DIV2K's 0801x4 with 0801 (x4), any name with itself."""
        stripped = degraded_id(image_id, factor)
        return [stripped, image_id] if stripped != image_id else [image_id]

    def example(self) -> str:
        """One listed id, for a message that says what the folder holds."""
        return min(self.files) if self.files else "(nothing)"
