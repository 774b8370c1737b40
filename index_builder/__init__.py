"""Corpus → embeddings Parquet shards → FAISS index, through Ray Data and fsspec."""
