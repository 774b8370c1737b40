"""The reconstruction tasks, named as the operators of adir_ops.physics.operators are; torch-free, so the command line can list them."""

# task -> how many times larger the clean image is than its measurement, per side (1: same size).
SCALE = {"sr4": 4, "sr8": 8, "deblur": 1, "colorize": 1, "inpaint": 1}
TASKS = tuple(SCALE)


def scale_factor(task: str) -> int:
    if task not in SCALE:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return SCALE[task]


# How the job knows each input's degradation (`--degradation`): "known", the task's operator as the paper
# states it (the noise from noise_sigma_255, else the task's); "auto" (with --degraded), estimated per
# photo by adir_ops.physics.estimate. Help texts here, torch-free: the command line shows them.
DEGRADATIONS = ("known", "auto")
DEGRADED_HELP = "inputs are already degraded (real use), e.g. DIV2K_valid_LR_bicubic/X4"
DEGRADATION_HELP = (
    "known (default): the task's operator (SR: MATLAB bicubic; deblur: 5x5 box, noise 10/255); auto, with "
    "--degraded: per photo, estimate the noise level and the SR kernel (bicubic, area, Gaussian) or the blur "
    "(Gaussian width, box, horizontal/vertical motion line), recorded in each row, which says when it is unsure. "
    "Not estimated: the SR factor, other kernels (defocus disc, motion at other angles, sharpening), blur that "
    "varies across the photo, noise that is not white (JPEG, brightness-dependent); docs/blind.md"
)
