"""Datasets: byte-level corpora and batching."""
