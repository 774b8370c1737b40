"""The whole build job on a real local Ray cluster: local disk and a real S3 server, bad inputs, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from adir_storage import join_url, open_fs
from index_builder import BuildConfig, Manifest, NeighborIndex, run_build
from index_builder.manifest import IDS_NAME
from index_builder.writer import embeddings_array, embeddings_url, errors_url
from tests.index_builder.corpus import invalid_images, normal_images, stem, unusual_images

pytestmark = pytest.mark.timeout(300)

# Tiny shards and batches so a 20-image corpus still spans several shards, tasks and batches.
# The weight-free encoder: the job's mechanics, not the encoder, are under test (and it is 100x faster).
SMALL = dict(embedder="offline-content", shard_size=4, batch_size=4, read_batch_size=3, progress=False)


def _read(url: str, storage_options=None):
    fs, path = open_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def _outputs(out: str, storage_options=None):
    """(embedded ids, embeddings, widths/heights by id, error rows) over the shards the manifest lists."""
    manifest = Manifest.read(out, storage_options)
    ids, vectors, sizes, errors = [], [], {}, []
    for entry in manifest.shards:
        table = _read(embeddings_url(out, entry.name), storage_options)
        ids += table.column("image_id").to_pylist()
        vectors.append(embeddings_array(table))
        sizes.update(
            zip(
                table.column("image_id").to_pylist(),
                zip(table.column("width").to_pylist(), table.column("height").to_pylist()),
            )
        )
        if entry.errors:
            errors += _read(errors_url(out, entry.name), storage_options).to_pylist()
    return manifest, ids, np.concatenate(vectors), sizes, errors


def _check_every_image_once(out, good: set[str], bad: dict[str, str], storage_options=None):
    manifest, ids, vectors, sizes, errors = _outputs(out, storage_options)
    error_ids = [e["image_id"] for e in errors]
    assert sorted(ids) == sorted(good) and len(ids) == len(set(ids))
    assert sorted(error_ids) == sorted(bad), errors  # exactly one error row per bad input
    assert {e["image_id"]: e["stage"] for e in errors} == bad
    assert all(e["error"] for e in errors)
    assert manifest.count == len(good) and manifest.errors == len(bad)
    index_ids = _read(join_url(out, IDS_NAME), storage_options).column("image_id").to_pylist()
    assert index_ids == ids  # row r of the index is row r of the shards, in manifest order
    return ids, vectors, sizes


def _check_search(out, ids, vectors, storage_options=None):
    index = NeighborIndex.open(out, embedder=SMALL["embedder"], storage_options=storage_options)
    got_ids, _, got_scores = index.search(vectors, k=5)
    assert got_ids[:, 0].tolist() == ids  # every image's own embedding finds itself first
    brute = vectors @ vectors.T
    order = np.argsort(-brute, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(got_scores, np.take_along_axis(brute, order, axis=1), rtol=1e-5, atol=1e-5)


def test_local_build_from_a_list_indexes_unusual_images_and_records_bad_ones(ray_cluster, tmp_path):
    files = {**normal_images(6), **unusual_images()}
    bad_files = invalid_images()
    src = tmp_path / "corpus"
    src.mkdir()
    for name, data in {**files, **{n: d for n, (d, _) in bad_files.items()}}.items():
        (src / name).write_bytes(data)
    uris = sorted(str(p) for p in src.iterdir()) + [str(src / "gone" / "missing.jpg")]
    listing = tmp_path / "list.csv"
    listing.write_text("uri\n" + "\n".join(uris) + "\n", encoding="utf-8")
    out = str(tmp_path / "index")

    report = run_build(BuildConfig(str(listing), out, **SMALL))

    assert report.count == len(files) and report.shards == 6 and report.shards_left == 0
    bad = {stem(n): stage for n, (_, stage) in bad_files.items()} | {"missing": "read"}
    ids, vectors, sizes = _check_every_image_once(out, {stem(n) for n in files}, bad)
    assert sizes["exif rotated"] == (40, 56) and sizes["one pixel"] == (1, 1) and sizes["img_000"] == (56, 40)
    _check_search(out, ids, vectors)
    # Per-stage figures add up to the rows: every row is read and written, only readable ones reach the forward.
    stages = report.stages
    assert stages["read/decode"].images == stages["write"].images == report.images_embedded == len(uris)
    assert stages["embed"].images == len(files)
    assert all(fig.busy_seconds > 0 for fig in stages.values())
    assert 0 <= report.startup_seconds <= report.seconds and report.steady_rate > 0
    assert all(name in report.stage_table() for name in ("read/decode", "embed", "write", "start-up"))


def test_s3_build_reads_and_writes_through_the_object_store(ray_cluster, s3fs_fs, s3_bucket, s3_storage_options):
    files = {**normal_images(4, seed=5), **unusual_images(seed=6)}
    bad_files = {n: v for n, v in invalid_images().items() if n in ("truncated.jpg", "bomb.png")}
    for name, data in {**files, **{n: d for n, (d, _) in bad_files.items()}}.items():
        s3fs_fs.pipe_file(f"{s3_bucket}/corpus/{name}", data)
    out = f"s3://{s3_bucket}/index"

    report = run_build(BuildConfig(f"s3://{s3_bucket}/corpus", out, storage_options=s3_storage_options, **SMALL))

    assert report.count == len(files)
    bad = {stem(n): stage for n, (_, stage) in bad_files.items()}
    ids, vectors, _ = _check_every_image_once(out, {stem(n) for n in files}, bad, s3_storage_options)
    assert "café ñandú 日本" in ids and "sixteen bit" in ids
    s3fs_fs.invalidate_cache()
    assert s3fs_fs.exists(f"{s3_bucket}/index/index.faiss") and s3fs_fs.exists(f"{s3_bucket}/index/manifest.json")
    assert not [p for p in s3fs_fs.find(f"{s3_bucket}/index") if "tmp" in p]
    _check_search(out, ids, vectors, s3_storage_options)
    again = run_build(BuildConfig(f"s3://{s3_bucket}/corpus", out, storage_options=s3_storage_options, **SMALL))
    assert again.shards_written == [] and again.shards_skipped == list(range(report.shards)) and not again.index_built
    assert again.stages == {} and again.stage_table() == ""  # nothing embedded, nothing to time


def test_read_tasks_yield_the_cores_to_cpu_actors_but_not_to_gpu_ones():
    from index_builder.embed_stage import READ_NICE, read_nice

    cpu, gpu = {"num_cpus": 0.5}, {"num_gpus": 1, "num_cpus": 1}
    assert read_nice(BuildConfig("src", "out"), cpu) == READ_NICE > 0
    assert read_nice(BuildConfig("src", "out"), gpu) == 0
    assert read_nice(BuildConfig("src", "out", read_nice=5), gpu) == 5
    with pytest.raises(ValueError, match="read_nice must be a nice value from 0 to 19"):
        BuildConfig("src", "out", read_nice=20)


def test_stage_times_count_every_row_and_only_forwarded_ones_as_embedded(tmp_path):
    """read_batch → EmbedBatch → StageTimes on a hand-made batch, without Ray: the figures follow the rows."""
    from index_builder.mapper import EmbedBatch
    from index_builder.reader import ReadConfig, read_batch
    from index_builder.throughput import StageTimes

    files = {**normal_images(3, seed=3), **{n: d for n, (d, _) in invalid_images().items()}}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    uris = sorted(str(tmp_path / n) for n in files)
    embed = EmbedBatch("offline-content", torch_threads=1)
    batch = read_batch(
        {"image_id": np.array(uris, dtype=object), "uri": np.array(uris, dtype=object), "shard": np.zeros(len(uris))},
        ReadConfig(image_size=embed.embedder.image_size),
    )
    out = embed(batch)
    times = StageTimes()
    times.add_batch(out, write_seconds=0.01)
    good = int(np.sum(out["stage"] == ""))
    assert good == 3 and len(uris) > good
    assert times.stages["read/decode"].images == times.stages["write"].images == len(uris)
    assert times.stages["embed"].images == good and times.stages["embed"].busy_seconds > 0
    assert times.first_forward is not None and "pixels" not in out


def test_resume_skips_committed_shards_and_recomputes_only_missing_torn_or_changed_ones(ray_cluster, tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    files = normal_images(14, seed=7, size=(24, 32))
    for name, data in files.items():
        (src / name).write_bytes(data)
    out = str(tmp_path / "index")
    config = dict(source=str(src), out=out, **SMALL)

    # An interrupted first run: one shard committed, then the job stops.
    first = run_build(BuildConfig(limit=10, max_shards=1, **config))
    assert first.shards_written == [0] and first.shards_left == 2 and first.count is None
    assert not os.path.exists(f"{out}/manifest.json")  # no index over a partial corpus
    shard0 = embeddings_url(out, "shard-000000-size4")
    before = os.stat(shard0)

    second = run_build(BuildConfig(limit=10, **config))
    assert second.shards_skipped == [0] and second.shards_written == [1, 2] and second.count == 10

    # A torn shard 1 and more ids later (the short shard 2 grows, shard 3 is new).
    shard1 = embeddings_url(out, "shard-000001-size4")
    with open(shard1, "rb") as f:
        data = f.read()
    with open(shard1, "wb") as f:
        f.write(data[: len(data) // 2])
    third = run_build(BuildConfig(**config))
    assert third.shards_skipped == [0] and third.shards_written == [1, 2, 3] and third.count == 14
    after = os.stat(shard0)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # never rewritten
    _check_every_image_once(out, {stem(n) for n in files}, {})


def test_a_killed_build_resumes_without_recomputing_or_duplicating(ray_cluster, tmp_path):
    """SIGKILL the `adir index build` driver once a shard is committed; a rerun finishes the rest."""
    src = tmp_path / "corpus"
    src.mkdir()
    files = normal_images(40, seed=9, size=(24, 32))
    for name, data in files.items():
        (src / name).write_bytes(data)
    out = tmp_path / "index"
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "index",
        "build",
        str(src),
        str(out),
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--embedder",
        "offline-content",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def committed():
        return sorted(p.name for p in (out / "embeddings").glob("*.parquet"))

    deadline = time.monotonic() + 240
    while not committed() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    done_before = committed()
    assert done_before, stderr.decode()[-2000:]
    before = {n: os.stat(out / "embeddings" / n) for n in done_before}

    report = run_build(
        BuildConfig(str(src), str(out), embedder="offline-content", shard_size=2, batch_size=2, progress=False)
    )

    skipped = {f"shard-{i:06d}-size2.parquet" for i in report.shards_skipped}
    assert skipped == set(done_before) and report.count == 40
    assert sorted(report.shards_skipped + report.shards_written) == list(range(20))
    for name, st in before.items():
        now = os.stat(out / "embeddings" / name)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not [p for p in (out / "embeddings").iterdir() if ".tmp-" in p.name]
    _check_every_image_once(str(out), {stem(n) for n in files}, {})
