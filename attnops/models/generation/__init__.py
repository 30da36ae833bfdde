"""Generative (causal language model) pipelines: base model, data, training, decoding, judging."""
