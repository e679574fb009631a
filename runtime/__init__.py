"""Training: datasets, the trainer process, and the run folders that keep every run."""
