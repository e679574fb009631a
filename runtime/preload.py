"""Imported once by the trainers' forkserver (see runtime/warm.py): torch, the trainer, the data."""

from runtime.warm import preload_datasets, preload_training

preload_training()
preload_datasets()
