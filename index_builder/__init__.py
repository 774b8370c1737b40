"""Corpus → embeddings Parquet shards → FAISS index, through Ray Data and fsspec.

Every name below is imported on first use: a Ray read worker that unpickles
`index_builder.reader.read_batch` imports the reader alone, not torch or faiss (what that
saves each worker: docs/throughput.md, "Earlier measurements").
"""

from adir_ops.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    """
    index_query: NeighborIndex
    job: BuildConfig BuildReport run_build
    manifest: Manifest
    """,
)
