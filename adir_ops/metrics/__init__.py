"""Image quality: the metrics a reconstruction is scored by, and the parameter files they need."""
