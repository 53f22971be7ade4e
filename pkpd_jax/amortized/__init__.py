"""Amortized model selection: synthetic corpora, the Transformer encoder, training and evaluation."""
