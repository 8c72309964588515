"""raymmft: Ray-based hyperparameter search for CLIP fine-tuning with cross-modal alignment (CMA)."""

__version__ = "0.1.0"
