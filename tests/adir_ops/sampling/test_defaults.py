"""The measured sampling defaults: one table per setting, covering every task, and steps only cut where measured."""

from adir_ops.physics.tasks import TASKS
from adir_ops.sampling.defaults import (
    DEFAULT_SAMPLER_BY_TASK,
    DEFAULT_STEPS_BY_TASK,
    PAPER_STEPS,
    default_steps,
)


def test_every_task_has_a_sampler_and_the_steps_table_names_only_tasks():
    assert set(DEFAULT_SAMPLER_BY_TASK) == set(TASKS)
    assert set(DEFAULT_STEPS_BY_TASK) <= set(TASKS)


def test_fewer_steps_only_for_the_prior_they_were_measured_with():
    assert default_steps("sr4", "default") == DEFAULT_STEPS_BY_TASK["sr4"] < PAPER_STEPS
    assert default_steps("sr4", "ffdnet") == DEFAULT_STEPS_BY_TASK["sr4"]
    # Not measured at fewer steps: the paper's 100.
    assert default_steps("inpaint", "default") == PAPER_STEPS
    for kind in ("unet64", "sd-x4", "auto", "tiny"):
        assert default_steps("sr4", kind) == PAPER_STEPS
