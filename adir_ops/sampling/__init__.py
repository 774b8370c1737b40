"""Reverse diffusion: the respaced DDPM chain (the schedule) and the measurement-guided samplers that run on it (paper Alg. 1)."""
