"""The ADIR method in pure PyTorch: operators, priors, guided sampling, LoRA adaptation, embedding, quality."""
