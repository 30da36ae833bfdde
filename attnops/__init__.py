"""attnops: MLOps pipeline for attention (transformer) models."""

__version__ = "0.1.0"
