"""Corpus → embeddings Parquet shards → FAISS index, through Ray Data and fsspec."""

from index_builder.faiss_index import NeighborIndex
from index_builder.job import BuildConfig, BuildReport, run_build
from index_builder.manifest import Manifest

__all__ = ["BuildConfig", "BuildReport", "Manifest", "NeighborIndex", "run_build"]
