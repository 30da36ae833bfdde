"""The model itself: data, tokenisation, fine-tuning, evaluation, attention metrics, registry I/O.

Imports torch/transformers only (registry.py adds MLflow); nothing from flows/.
"""
