"""ADIR in Stable Diffusion's latent space: the x4 upscaler (paper Sec. 4.1) and text-guided editing with the inpainting model (Sec. 4.4)."""
