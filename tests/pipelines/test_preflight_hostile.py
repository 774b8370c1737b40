"""`adir reconstruct` refuses hostile or ignored options before any actor starts, and never hangs on an input.

Issue 21, cases 16-19, 23 and 25: a guidance scale the sampler ignores, a FIFO or /dev/zero among the
inputs, a YAML bomb in --config, late checks (a hub prior not cached, a torn index, negative
numbers), and options with no upper bound.
"""

from __future__ import annotations

import os
import shutil
import time

import pyarrow.parquet as pq
import pytest

from cluster.config import ReconstructConfig
from pipelines import cli
from tests.cluster.helpers import write_pictures

pytestmark = pytest.mark.timeout(120)

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    write_pictures(str(folder), [("a", 1)], height=16, width=20)
    return folder


def _reconstruct(inputs, out, *extra) -> list[str]:
    base = ["--task", "sr4", "--mode", "baseline", "--prior", "tiny:16", "--steps", "3", "--no-progress"]
    return ["reconstruct", "--inputs", str(inputs), "--out", str(out), *base, *extra]


def _refused(capsys, argv) -> str:
    """The command exits 2 with one error line, no traceback; returns that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("adir reconstruct: error: ")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------ 16. an ignored guidance scale
def test_a_guidance_scale_the_default_sampler_ignores_is_refused(tmp_path, inputs, capsys):
    err = _refused(capsys, _reconstruct(inputs, tmp_path / "out", "--guidance-scale", "5"))
    assert "--guidance-scale 5 would be ignored" in err and "auto (for --task sr4: ddnm)" in err
    assert "eq16" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sampler", "ddnm", "--guidance-scale", "2"], "--sampler ddnm has no guidance scale"),
        (["--sampler", "ddnm-neutral-cast"], "works for --task colorize only, not sr4"),
        (["--prior", "sd-x4:tiny", "--sampler", "eq16"], "--sampler does not apply to --prior sd-x4:tiny"),
        (["--prior", "sd-x4:tiny", "--guidance-scale", "3"], "--guidance-scale does not apply"),
    ],
)
def test_sampler_options_that_would_be_ignored_or_fail_per_image_are_refused(tmp_path, inputs, capsys, flags, message):
    assert message in _refused(capsys, _reconstruct(inputs, tmp_path / "out", *flags))


def test_a_guidance_scale_for_an_eq16_sampler_passes_the_preflight(tmp_path, inputs):
    from pipelines.reconstruct import preflight

    config = ReconstructConfig(
        inputs=str(inputs),
        out=str(tmp_path / "out"),
        task="sr4",
        mode="baseline",
        prior="tiny:16",
        sampler="eq16",
        guidance_scale=5.0,
    )
    assert [item["image_id"] for item in preflight(config)[1]] == ["a"]


# ------------------------------------------------------------------ 23 and 25. numbers in range, checked up front
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tile-overlap", "-5"], "--tile-overlap must be an integer from 0 to 4,096; got -5"),
        (["--tile-overlap", "16"], "--tile-overlap 16 must be smaller than the prior's 16 px tile"),
        (["--cpus-per-actor", "-1"], "--cpus-per-actor must be from 0 to 1024; got -1"),
        (["--cpus-per-actor", "0"], "--cpus-per-actor 0 would pack any number of actors"),
        (["--gpus-per-actor", "-1"], "--gpus-per-actor must be from 0 to 1024; got -1"),
        (["--gpus-per-actor", "1.5"], "--gpus-per-actor above 1 must be a whole number"),
        (["--samples", "1000000"], "--samples must be an integer from 1 to 64; got 1000000"),
        (["--k", "100000"], "--k must be an integer from 1 to 1,000"),
        (["--steps", "5000"], "--steps must be an integer from 1 to 1,000"),
        (["--lora-steps", "10000000"], "--lora-steps must be an integer from 0 to 100,000"),
        (["--tile-batch", "100000"], "--tile-batch must be an integer from 1 to 256"),
        (["--num-actors", "1000000"], "--num-actors must be an integer from 1 to 1,024"),
        (["--max-input-bytes", "0"], "--max-input-bytes must be an integer from 1"),
    ],
)
def test_numbers_out_of_range_are_refused_in_the_flags_words(tmp_path, inputs, capsys, flags, message):
    assert message in _refused(capsys, _reconstruct(inputs, tmp_path / "out", *flags))
    assert not (tmp_path / "out").exists()


def test_a_noise_level_off_the_0_to_255_scale_is_refused():
    with pytest.raises(ValueError, match="noise level on the 0..255 scale; got -3"):
        ReconstructConfig(inputs="a", out="b", task="sr4", mode="baseline", noise_sigma_255=-3.0)


def test_a_hub_prior_missing_from_the_cache_fails_before_the_actors_with_the_download_hint(
    tmp_path, inputs, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _refused(capsys, _reconstruct(inputs, tmp_path / "out", "--prior", "adir-test-nobody/no-such-prior"))
    assert "not in the local Hugging Face cache" in err and "hf download adir-test-nobody/no-such-prior" in err
    assert not (tmp_path / "out").exists()


def test_a_truncated_index_file_is_refused_by_the_preflight(corpus_and_index, tmp_path, inputs):
    from pipelines.reconstruct import preflight

    _, index = corpus_and_index
    torn = tmp_path / "index"
    shutil.copytree(index, torn)
    path = torn / "index.faiss"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 40)  # the header (and its counts) intact: only a load finds it
    config = ReconstructConfig(
        inputs=str(inputs), out=str(tmp_path / "out"), task="sr4", index=str(torn), prior="tiny:16", k=2
    )
    with pytest.raises(ValueError, match="index.faiss cannot be read by FAISS"):
        preflight(config)


# ------------------------------------------------------------------ 19. a YAML bomb
@pytest.mark.parametrize("key", ["seed", "storage_options", "lora", "metrics", "unknown_key"])
def test_a_yaml_bomb_in_the_job_config_is_refused_at_once_under_any_key(tmp_path, inputs, capsys, key):
    job = tmp_path / "job.yaml"
    job.write_text(BOMB + f"{key}: *i\n")
    started = time.monotonic()
    err = _refused(capsys, _reconstruct(inputs, tmp_path / "out", "--config", str(job)))
    assert time.monotonic() - started < 10
    assert "expands to more than 100,000 values" in err and str(job) in err and len(err) < 400


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [*a]\n", "recursive alias"),
        ("seed: [\n", "is not valid YAML at line 2"),
        ("seed: " + "[" * 200 + "]" * 200 + "\n", "nested more than 100 levels"),
    ],
)
def test_hostile_yaml_shapes_are_one_line_errors_naming_the_file(tmp_path, inputs, capsys, text, message):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    err = _refused(capsys, _reconstruct(inputs, tmp_path / "out", "--config", str(job)))
    assert message in err and str(job) in err


def test_an_error_never_shows_a_whole_value():
    big = [[list(range(1000))] * 1000] * 1000  # shared, as an alias makes it: 10^9 leaves walked
    started = time.monotonic()
    with pytest.raises(ValueError) as caught:
        ReconstructConfig(inputs="a", out="b", task="sr4", mode="baseline", seed=big)
    assert time.monotonic() - started < 1
    assert len(str(caught.value)) < 200 and "(1000 items)" in str(caught.value)


# ------------------------------------------------------------------ 17, 18. FIFOs, devices, the byte cap
@pytest.mark.timeout(60)
def test_a_fifo_as_the_config_or_the_inputs_list_is_refused_without_opening_it(tmp_path, inputs, capsys):
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    assert "is a FIFO" in _refused(capsys, _reconstruct(inputs, tmp_path / "out", "--config", str(fifo)))
    listing = tmp_path / "list.txt"
    os.mkfifo(listing)
    assert "--inputs" in _refused(capsys, _reconstruct(listing, tmp_path / "out"))


@pytest.mark.timeout(60)
def test_fifos_devices_and_oversized_files_become_error_items_without_being_opened(tmp_path):
    from pipelines.inputs import list_inputs

    folder = tmp_path / "inputs"
    write_pictures(str(folder), [("a", 1)], height=16, width=20)
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "big.png").write_bytes(b"\0" * 5000)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder / n}\n" for n in ("a.png", "fifo.png", "zero.png", "big.png")))
    for source in (folder, listing):
        items = {i["image_id"]: i for i in list_inputs(str(source), task="sr4", max_bytes=4000)}
        assert sorted(items) == ["a", "big", "fifo", "zero"]
        assert "error" not in items["a"]
        assert "not a regular file (a FIFO)" in items["fifo"]["error"]
        assert "not a regular file (a device)" in items["zero"]["error"]
        assert "over the cap of 4,000 bytes" in items["big"]["error"] and "--max-input-bytes" in items["big"]["error"]


def test_the_actor_reads_at_most_max_input_bytes(tmp_path):
    """A remote object's size is not known at listing time: the read stage caps it (here, local files stand in)."""
    from cluster.worker import ReconstructionWorker

    folder = tmp_path / "inputs"
    write_pictures(str(folder), [("a", 1)], height=16, width=20)
    (folder / "zero.png").symlink_to("/dev/zero")
    size = (folder / "a.png").stat().st_size
    config = ReconstructConfig(
        inputs=str(folder),
        out=str(tmp_path / "out"),
        task="sr4",
        mode="baseline",
        prior="tiny:16",
        steps=2,
        max_input_bytes=size - 1,
    )
    worker = ReconstructionWorker(config)
    row = worker.process({"image_id": "a", "uri": str(folder / "a.png"), "name": "a"})
    assert row["stage"] == "read" and "--max-input-bytes" in row["error"]
    row = worker.process({"image_id": "zero", "uri": str(folder / "zero.png"), "name": "zero"})
    assert row["stage"] == "read" and "is a device" in row["error"]
    stored = pq.read_table(tmp_path / "out" / "results" / "zero~error.parquet").to_pylist()[0]
    assert stored["stage"] == "read"


def test_a_yaml_bomb_in_the_edit_config_is_refused_at_once(tmp_path, capsys):
    job = tmp_path / "edit.yaml"
    job.write_text(BOMB + "steps: *i\n")
    argv = ["edit", "--image", str(tmp_path / "x.png"), "--prompt", "a cat", "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--config", str(job)]) == 2
    err = capsys.readouterr().err
    assert "expands to more than 100,000 values" in err and str(job) in err and "Traceback" not in err


def test_a_listing_warning_never_prints_a_urls_password(tmp_path, capsys):
    """Case 5's sibling: the listing's own warnings (a duplicate id in a list file) redact the URL."""
    from pipelines.inputs import list_inputs

    listing = tmp_path / "list.txt"
    listing.write_text("http://admin:PASS@127.0.0.1:9/x/a.png\nhttp://admin:PASS@127.0.0.1:9/y/a.png\n")
    items = list_inputs(str(listing), task="sr4")
    assert [item["image_id"] for item in items] == ["a"]
    err = capsys.readouterr().err
    assert "skipped" in err and "PASS" not in err and "http://***@127.0.0.1:9/y/a.png" in err
