"""LoRA adaptation of a prior on its neighbours (paper eqs. 17-18): its settings, the training loop, the LoRA layers, the adapter and its cache, the loss."""
