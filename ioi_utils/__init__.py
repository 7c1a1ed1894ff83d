"""ioi_utils: IOI datasets, model loading, metrics, patching, circuits and fine-tuning for the book."""

__version__ = "0.1.0"
