"""Ray runtime for dataset-scale reconstruction: GPU-pinned worker actors and cluster definitions."""
