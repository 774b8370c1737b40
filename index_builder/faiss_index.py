"""FAISS index from the embeddings shards (streamed), and the checks that an index folder is whole.

The K-NN lookup the rest of ADIR uses, NeighborIndex, is in index_query (importable from here too).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adir_storage import join_url, open_fs
from index_builder.manifest import IDS_NAME, INDEX_NAME, IdsChecksum, Manifest, ShardEntry
from index_builder.writer import embeddings_array, embeddings_url, read_shard

METRIC = "inner_product"  # embeddings are unit vectors: inner product = cosine similarity
DEFAULT_TRAIN_SIZE = 100_000
IDS_SCHEMA = pa.schema(
    [pa.field("image_id", pa.string(), nullable=False), pa.field("uri", pa.string(), nullable=False)]
)
# faiss 1.15 takes its BLAS path only when queries x dim reaches this threshold (default
# 128000, i.e. 250 queries at d=512); below it a scalar scan runs. Measured by
# bench/retrieval.py (200k x 512, 100 queries): 2.35 s with the default vs 0.31 s with 1000.
CPU_BLAS_THRESHOLD = 1000


def _faiss():
    import faiss

    return faiss


def use_gpu(gpu: bool | None) -> bool:
    faiss = _faiss()
    available = hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0
    if gpu and not available:
        raise RuntimeError(
            "GPU FAISS was requested but faiss sees no GPU; install faiss-gpu on a GPU node or pass gpu=False"
        )
    return available if gpu is None else bool(gpu)


def _to_gpu(index):
    """All GPUs when the index type has a GPU version (Flat, IVF*); HNSW and others stay on CPU."""
    faiss = _faiss()
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except Exception:  # faiss raises for index types without a GPU implementation
        return index, False


# A factory spec is a FAISS factory string, optionally followed by "|" and the ParameterSpace
# search settings to store in the index file, e.g. "IVF4096,PQ64,RFlat|nprobe=16,k_factor_rf=4":
# a factory-built IVF searches 1 list (nprobe=1) and a refine index re-ranks only k candidates
# (k_factor=1) unless told otherwise, and FAISS writes both settings (and HNSW's efSearch) into
# the index file, so every reader of the index gets the setting the build chose.
SEARCH_SEPARATOR = "|"


def split_factory(spec: str) -> tuple[str, str]:
    """(FAISS factory string, ParameterSpace settings or "") of a factory spec."""
    factory, _, params = spec.partition(SEARCH_SEPARATOR)
    return factory.strip(), params.strip()


def set_search_params(index, params: str, spec: str = "") -> None:
    """Apply ParameterSpace settings such as "nprobe=16,k_factor_rf=4" to `index`; ValueError naming a bad one."""
    if not params:
        return
    faiss = _faiss()
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"index factory {spec or params!r}: FAISS cannot apply search setting(s) {params!r} ({last}); "
            "IVF takes nprobe, a refine index (…,RFlat) k_factor_rf, HNSW efSearch"
        ) from None


def new_index(dim: int, factory: str):
    """An empty index of a factory spec (see SEARCH_SEPARATOR), its search settings applied."""
    faiss = _faiss()
    spec = factory
    factory, params = split_factory(spec)
    if factory == "Flat":
        index = faiss.IndexFlatIP(dim)
    else:
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except Exception as exc:
            raise ValueError(
                f"FAISS cannot build index factory {spec!r} for dim {dim}: {exc}; "
                "try 'Flat', 'HNSW32' or 'IVF1024,PQ64'"
            ) from exc
    # index_factory turns on polysemous training for PQ: 99 of 103 CPU s of an IVF-PQ
    # training in bench/retrieval.py, for a code ordering that exact re-ranking never uses.
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
    set_search_params(index, params, spec)
    return index


def check_factory(dim: int, factory: str) -> None:
    """Raise ValueError now if FAISS cannot build `factory` (new_index does the check; nothing is trained)."""
    if factory == AUTO_FACTORY:
        return  # resolved by default_factory once the vector count is known
    new_index(dim, factory)


def training_size(index, requested: int) -> int:
    """Vectors to train `index` on: `requested`, raised to FAISS's minimum of 39 per IVF list."""
    ivf = _faiss().try_extract_index_ivf(index)
    return max(requested, 39 * int(ivf.nlist)) if ivf is not None else requested


AUTO_FACTORY = "auto"
# bench/retrieval.py at 1.7M clustered 512-d vectors, 2 CPU threads, 100 queries, k=50
# (docs/retrieval.md): Flat took 7.3 s per batch (exact; linear in N: ~0.9 s at 200k, extrapolated) and
# cKDTree 444 s; IVF4096,Flat|nprobe=8 took 132 ms at recall@50 1.000, the fastest setting
# with recall >= 0.99 (IVF4096,PQ64,RFlat needed k_factor_rf=16 for 0.999, at 133 ms;
# HNSW32 reached 0.892 at efSearch=512 after a 28-min build).
# Up to 200k vectors Flat stays under ~1 s per batch and needs no training; IVF4096 wants
# >= 160k training vectors (39 per list) anyway.
EXACT_UP_TO = 200_000
APPROXIMATE_LISTS = 4096
APPROXIMATE_SETTINGS = "nprobe=8"


def default_factory(count: int, dim: int, exact_up_to: int | None = None) -> str:
    """The factory spec `index_factory="auto"` builds for `count` vectors of `dim`.

    Exact Flat up to `exact_up_to` vectors (default EXACT_UP_TO), above it the fastest index
    that kept recall@50 >= 0.99 at 1.7M in docs/retrieval.md. A corpus too small to train
    APPROXIMATE_LISTS lists (39 vectors each) gets the largest power of two it can train.
    """
    if count <= (EXACT_UP_TO if exact_up_to is None else exact_up_to):
        return "Flat"
    lists = min(APPROXIMATE_LISTS, 1 << max(0, (count // 39).bit_length() - 1))
    return f"IVF{lists},Flat{SEARCH_SEPARATOR}{APPROXIMATE_SETTINGS}"


# Every FAISS float index file starts with a 4-byte type code, then the common header: d as int32
# and ntotal as int64 (faiss/impl/index_write.cpp, write_index_header). Reading those 16 bytes
# checks a remote index against its manifest without downloading it.
_HEADER = struct.Struct("<4siq")


def read_index_header(out: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, int, int]:
    """(type code, dim, vectors) from the first bytes of OUT/index.faiss; ValueError if it is not a FAISS index."""
    url = join_url(out, INDEX_NAME)
    fs, path = open_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} is missing; rebuild the index with `adir index build SOURCE {out}`") from None
    if len(head) < _HEADER.size:
        raise ValueError(
            f"{url} is {len(head)} bytes: not a FAISS index; rebuild it with `adir index build SOURCE {out}`"
        )
    code, dim, count = _HEADER.unpack(head)
    if not (code[:1] == b"I" and code.isascii() and code.decode("ascii").isprintable()):
        raise ValueError(
            f"{url} is not a FAISS index (it starts with {code!r}); rebuild it with `adir index build SOURCE {out}`"
        )
    return code.decode("ascii"), dim, count


def _read_index(out: str, storage_options: Mapping[str, Any] | None):
    faiss = _faiss()
    fs, path = open_fs(join_url(out, INDEX_NAME), storage_options)
    try:
        with fs.open(path, "rb") as f:
            return faiss.read_index(faiss.PyCallbackIOReader(f.read))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{join_url(out, INDEX_NAME)} is missing; rebuild the index with `adir index build SOURCE {out}`"
        ) from None
    except RuntimeError as exc:  # faiss raises RuntimeError on a torn or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{join_url(out, INDEX_NAME)} cannot be read by FAISS ({first}); rebuild it with `adir index build SOURCE {out}`"
        ) from None


def _check_counts(where: str, manifest: Manifest, dim: int, count: int) -> None:
    if dim != manifest.dim:
        raise ValueError(
            f"{where} holds vectors of dim {dim} but its manifest says {manifest.embedder} (dim {manifest.dim}): "
            "the index file is from another build; rebuild it with `adir index build`"
        )
    if count != manifest.count:
        raise ValueError(
            f"{where} holds {count} vectors but its manifest says {manifest.count}; rebuild it with `adir index build`"
        )


def verify_index(
    out: str, manifest: Manifest, storage_options: Mapping[str, Any] | None = None, *, full: bool = False
) -> None:
    """Raise ValueError/FileNotFoundError unless OUT's index and ids agree with `manifest`.

    The header check reads a few bytes (fit for a preflight over object storage); `full`
    loads the index with FAISS too, catching a file torn after its header.
    """
    _, dim, count = read_index_header(out, storage_options)
    _check_counts(join_url(out, INDEX_NAME), manifest, dim, count)
    ids_fs, ids_path = open_fs(join_url(out, IDS_NAME), storage_options)
    try:
        with ids_fs.open(ids_path, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{join_url(out, IDS_NAME)} is missing; rebuild the index with `adir index build SOURCE {out}`"
        ) from None
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(
            f"{join_url(out, IDS_NAME)} is not a readable Parquet file ({exc}); rebuild the index"
        ) from None
    if rows != manifest.count:
        raise ValueError(
            f"{join_url(out, IDS_NAME)} lists {rows} images but the manifest says {manifest.count}; rebuild the index"
        )
    if full:
        index = _read_index(out, storage_options)
        _check_counts(join_url(out, INDEX_NAME), manifest, int(index.d), int(index.ntotal))
        check_ids(out, manifest, read_ids(out, storage_options))


def read_ids(out: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """OUT/ids.parquet as a table of (image_id, uri); ValueError naming the fix if it cannot be read."""
    ids_fs, ids_path = open_fs(join_url(out, IDS_NAME), storage_options)
    try:
        with ids_fs.open(ids_path, "rb") as f:
            return pq.read_table(f, schema=IDS_SCHEMA)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{join_url(out, IDS_NAME)} is missing; rebuild the index with `adir index build SOURCE {out}`"
        ) from None
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(
            f"{join_url(out, IDS_NAME)} cannot be read ({exc}); rebuild the index with `adir index build SOURCE {out}`"
        ) from None


def check_ids(out: str, manifest: Manifest, ids: pa.Table) -> None:
    """Refuse an ids.parquet whose rows are not the ones the index was built with, in that order.

    An index from before the checksum was recorded (manifest.ids_sha256 == "") is accepted unchecked.
    """
    if not manifest.ids_sha256:
        return
    if IdsChecksum().update(ids.column("image_id"), ids.column("uri")).hexdigest() != manifest.ids_sha256:
        from adir_storage import redact_url

        raise ValueError(
            f"{join_url(out, IDS_NAME)} does not match the index built with it; rebuild with "
            f"`adir index build {redact_url(manifest.source) if manifest.source else 'SOURCE'} {out}`"
        )


def _training_sample(out: str, shards: Sequence[ShardEntry], train_size: int, storage_options) -> np.ndarray:
    """An evenly spread sample (same rows every time) of at most train_size vectors, one shard at a time."""
    total = sum(s.rows for s in shards)
    fraction = min(1.0, train_size / max(total, 1))
    parts = []
    for entry in shards:
        take = min(entry.rows, math.ceil(entry.rows * fraction))
        if take == 0:
            continue
        vectors = embeddings_array(read_shard(embeddings_url(out, entry.name), storage_options, ["embedding"]))
        parts.append(vectors[np.linspace(0, entry.rows - 1, take).round().astype(np.int64)])
    return np.concatenate(parts)[:train_size] if parts else np.zeros((0, 0), np.float32)


def build_faiss_index(
    out: str,
    shards: Sequence[ShardEntry],
    dim: int,
    factory: str = "Flat",
    *,
    storage_options: Mapping[str, Any] | None = None,
    train_size: int = DEFAULT_TRAIN_SIZE,
    gpu: bool | None = None,
) -> tuple[int, str]:
    """Stream the committed shards into OUT/index.faiss and OUT/ids.parquet; return (vector count, ids checksum).

    Only one shard's embeddings are in memory besides the index itself. Row r of the
    index is row r of ids.parquet: shards in manifest order, rows in file order; the
    checksum (manifest.IdsChecksum) lets a reader check that it still is.
    """
    faiss = _faiss()
    index = new_index(dim, factory)
    train_rows = training_size(index, train_size)  # on the CPU index: a GPU copy hides its IVF
    on_gpu = False
    if use_gpu(gpu):
        index, on_gpu = _to_gpu(index)
    if not index.is_trained:
        sample = _training_sample(out, shards, train_rows, storage_options)
        try:
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        except Exception as exc:
            raise ValueError(
                f"index factory {factory!r} could not be trained on {len(sample)} vectors: {exc}; "
                "use 'Flat' or fewer clusters for a corpus this small"
            ) from exc
    ids_fs, ids_path = open_fs(join_url(out, IDS_NAME), storage_options)
    count, checksum = 0, IdsChecksum()
    with ids_fs.open(ids_path, "wb") as sink, pq.ParquetWriter(sink, IDS_SCHEMA) as ids_writer:
        for entry in shards:
            table = read_shard(embeddings_url(out, entry.name), storage_options)
            if table.num_rows != entry.rows:
                raise RuntimeError(
                    f"shard {entry.name} has {table.num_rows} rows but its commit record says {entry.rows}; rerun the build"
                )
            if table.num_rows:
                index.add(np.ascontiguousarray(embeddings_array(table)))
                ids = table.select(["image_id", "uri"]).cast(IDS_SCHEMA)
                ids_writer.write_table(ids)
                checksum.update(ids.column("image_id"), ids.column("uri"))
            count += table.num_rows
    if on_gpu:
        index = faiss.index_gpu_to_cpu(index)
        set_search_params(index, split_factory(factory)[1], factory)  # what the file stores, whatever the copy kept
    if index.ntotal != count:
        raise RuntimeError(f"FAISS holds {index.ntotal} vectors but {count} rows were read")
    index_fs, index_path = open_fs(join_url(out, INDEX_NAME), storage_options)
    with index_fs.open(index_path, "wb") as f:
        # Streamed through a callback: serialize_index would copy a 3.5 GB index in memory.
        faiss.write_index(index, faiss.PyCallbackIOWriter(lambda b: f.write(b) or len(b)))
    return count, checksum.hexdigest()
