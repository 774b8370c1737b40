"""Training the embedded default prior, in parts: the run's settings, the patches, the training loop, the export; `pipelines.train_prior` is its command."""
