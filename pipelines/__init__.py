"""What users run: build an index, reconstruct a dataset, evaluate, the demo, and the `adir` CLI."""
