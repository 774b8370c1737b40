"""Shared test material for the reconstruction job: generated pictures and a tiny index built by the real builder."""

from __future__ import annotations

# The pictures are the benchmarks' own (bench/ must not import tests/, so tests import bench/).
from bench.pictures import smooth_picture, write_pictures  # noqa: F401  (re-used by many tests)

CORPUS_SIZE = 8
_INDEXES: dict[str, str] = {}


def tiny_index(tmp_path_factory) -> tuple[str, str]:
    """(corpus folder, index folder): CORPUS_SIZE pictures (seeds 100..) indexed with the offline encoder.

    Built once per session with index_builder.job.run_build (real Ray Data, real FAISS);
    needs the session's Ray cluster (the `ray_cluster` fixture).
    """
    if "index" not in _INDEXES:
        from index_builder.job import BuildConfig, run_build

        root = tmp_path_factory.mktemp("corpus")
        corpus = str(root / "corpus")
        # Corpus pictures at 48x64, larger than the tiny prior's 16 px: adaptation crops them.
        write_pictures(corpus, [(f"c{i}", 100 + i) for i in range(CORPUS_SIZE)], height=48, width=64, fmt="jpg")
        index = str(root / "index")
        # The weight-free encoder: these tests are about the job's mechanics, and it is 100x faster.
        run_build(BuildConfig(corpus, index, embedder="offline-content", shard_size=4, batch_size=8, progress=False))
        _INDEXES["corpus"], _INDEXES["index"] = corpus, index
    return _INDEXES["corpus"], _INDEXES["index"]


def job_options(**overrides) -> dict:
    """A small, fast job: tiny 16 px prior, 4 sampling steps, 2 LoRA steps of batch 2, K = 3."""
    from adir_ops.adaptation.config import fold_flat_names

    options = dict(prior="tiny:16", steps=4, lora_steps=2, lora_batch_size=2, k=3, task="sr4", mode="adir", seed=7)
    options.update(overrides)
    return fold_flat_names(options)  # lora_steps=... → lora=AdaptConfig(steps=...), as job.yaml's flat keys are
