"""Embedding models (DNABERT-S, ESM-2) and the classifier, with their checkpoint loaders."""
