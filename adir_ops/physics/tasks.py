"""The reconstruction tasks, named as the operators of adir_ops.physics.operators are; torch-free, so the command line can list them."""

# task -> how many times larger the clean image is than its measurement, per side (1: same size).
SCALE = {"sr4": 4, "sr8": 8, "deblur": 1, "colorize": 1, "inpaint": 1}
TASKS = tuple(SCALE)


def scale_factor(task: str) -> int:
    if task not in SCALE:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return SCALE[task]
