"""Config fields checked against their annotations: a wrong value from YAML or a flag is refused by its name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from adir_ops.validation import MAX_SHOWN, check_fields, check_value, config_from_dict, short_repr


@dataclass(frozen=True)
class Inner:
    steps: int = 1


@dataclass(frozen=True)
class Job:
    degraded: bool = False
    seed: int = 0
    guidance_scale: float = 1.0
    out: str = "out"
    limit: Optional[int] = None
    metrics: tuple[str, ...] = ("psnr",)
    options: Mapping[str, Any] = field(default_factory=dict)
    lora: Inner = field(default_factory=Inner)
    task: str | None = None


@dataclass(frozen=True)
class NeedsTask:
    task: str


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("degraded", "no", r"--degraded must be true or false; got 'no' \(str\)"),  # YAML's 'no' is truthy text
        ("seed", "abc", r"--seed must be an integer; got 'abc' \(str\)"),
        ("seed", True, r"--seed must be an integer; got True \(bool\)"),
        ("seed", 1.5, r"--seed must be an integer"),
        ("guidance_scale", float("nan"), r"--guidance-scale must be a finite number; got nan"),
        ("guidance_scale", float("inf"), r"--guidance-scale must be a finite number"),
        ("guidance_scale", "2", r"--guidance-scale must be a number; got '2' \(str\)"),
        ("out", 3, r"--out must be a string; got 3 \(int\)"),
        ("out", "bad\udcffname", r"--out bad\\udcffname is not valid UTF-8 text; rename the path to UTF-8"),
        ("limit", "10", r"--limit must be an integer; got '10'"),
        ("metrics", "psnr", r"--metrics must be a list; got 'psnr'"),
        ("metrics", ["psnr", 3], r"--metrics must be a string; got 3 \(int\)"),
        ("options", ["a"], r"--options must be a mapping of options"),
        ("options", {1: "a"}, r"--options keys must be strings; got \[1\]"),
        ("lora", {"steps": 2}, r"--lora must be a mapping of Inner fields"),
        ("task", 5, r"--task must be a string"),
    ],
)
def test_a_wrong_type_is_refused_naming_the_field_as_its_flag(name, value, message):
    with pytest.raises(ValueError, match=message):
        check_fields(Job(**{name: value}))


def test_values_of_the_right_type_pass():
    check_fields(Job())
    # An int is a number, a YAML list is a tuple, None fits an Optional.
    check_fields(Job(True, 3, 2, "o", None, ["a", "b"], {"k": [1]}, Inner(2), "sr4"))
    check_value("anything", object(), Any)


def test_a_huge_value_is_shown_cut_short_with_its_size():
    bomb = [["x" * 1000] * 1000] * 1000  # a YAML alias bomb's shape: a million shared items
    text = short_repr(bomb)
    assert len(text) <= MAX_SHOWN + len(" (1000 items)") and text.endswith("(1000 items)")
    with pytest.raises(ValueError) as refused:
        check_fields(Job(seed=bomb))
    assert len(str(refused.value)) < 200


def test_unknown_options_are_named_with_the_known_ones_and_required_ones_missing_become_none():
    with pytest.raises(ValueError, match=r"unknown job option\(s\) \['sede'\]; known options: \['degraded', "):
        config_from_dict(Job, {"sede": 1}, "job")
    # A required option left out reaches the config's own check as None (named there), not a TypeError.
    assert config_from_dict(NeedsTask, {}, "job", required=("task",)) == NeedsTask(None)
    assert config_from_dict(NeedsTask, {"task": "sr4"}, "job", required=("task",)) == NeedsTask("sr4")
    with pytest.raises(ValueError, match="--task must be a string; got None"):
        check_fields(config_from_dict(NeedsTask, {}, "job", required=("task",)))
