"""Diffusion priors: the registry and the `--prior` grammar, the DDPM UNet prior, the denoiser prior, Guided Diffusion, tiling, weights."""
