"""Data: reading volumes, finding datasets, preparing slices, synthetic brains."""
