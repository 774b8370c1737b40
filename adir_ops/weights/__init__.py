"""Weights that ship inside the package (torch-free, so the command line can name them cheaply).

`default/`: the embedded default prior, a 64 px diffusers DDPM UNet trained by
pipelines/train_prior.py on the embedded default's photos (default/COMMAND.md reproduces it).
It is what every command uses when no --prior is named.
"""

import os

DEFAULT_PRIOR_NAME = "default"
DEFAULT_PRIOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default")
