"""The adapter store (cluster.adapters): race-safe reuse in OUT/adapters, warm starts, tampered entries retrained.

The keys and the warm-start choice (adir_ops.adaptation.cache) are tested in tests/adir_ops/adaptation/test_cache.py.
"""

import json
import multiprocessing
import os

import pytest
import torch
from PIL import Image

from adir_ops.adaptation.cache import WarmStart
from adir_ops.adaptation.config import AdaptConfig
from adir_ops.adaptation.training import adapt
from adir_ops.physics.operators import observe
from adir_ops.pipeline import ADIRPipeline
from adir_ops.priors.denoiser import DenoiserPrior
from adir_ops.retrieval.arms import GivenNeighbours
from adir_ops.sampling.config import SamplerConfig
from cluster.adapters import AdapterStore
from tests.cluster.helpers import smooth_picture

pytestmark = pytest.mark.timeout(300)
LORA = AdaptConfig(steps=3, batch_size=2, learning_rate=1e-2)


# ---------------------------------------------------------------- the store
@pytest.fixture(scope="module")
def prior():
    return DenoiserPrior.tiny().eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    uris = []
    for i in range(6):
        path = str(folder / f"n{i}.png")
        Image.fromarray(smooth_picture(200 + i, 24, 28)).save(path)
        uris.append(path)
    return uris


def _adapter(prior, seed, key="0" * 64, init=None):
    images = [torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(seed)) * 2 - 1]
    adapter = adapt(prior, images, LORA, torch.Generator().manual_seed(seed))
    adapter.provenance = {"key": key, "ids": ["x"], "uris": ["u"], "init": init}
    return adapter


def test_store_round_trip_and_what_it_refuses(tmp_path, prior):
    store = AdapterStore(str(tmp_path / "adapters"))
    key = "ab" * 32
    assert store.get(key) is None and store.entries() == []
    adapter = _adapter(prior, 1, key)
    store.put(key, adapter, {"ids": ["n1", "n2"], "uris": ["u1", "u2"], "init": None})
    back = AdapterStore(str(tmp_path / "adapters")).get(key)  # another actor's view
    assert all(torch.equal(back.state_dict[k], v) for k, v in adapter.state_dict.items())
    assert [(e.key, e.ids) for e in AdapterStore(str(tmp_path / "adapters")).entries()] == [(key, {"n1", "n2"})]
    # A file under a key it does not record, garbage, a stray name: ignored, never used.
    other = "cd" * 32
    with open(tmp_path / "adapters" / f"{other}.safetensors", "wb") as f:
        f.write(adapter.to_bytes())  # provenance says key ab..., the name says cd...
    assert store.get(other) is None
    with open(tmp_path / "adapters" / f"{other}.safetensors", "wb") as f:
        f.write(b"not a safetensors file")
    assert store.get(other) is None
    (tmp_path / "adapters" / f"{other}.json").write_text(json.dumps({"key": key, "ids": ["n1"], "init": None}))
    (tmp_path / "adapters" / "notakey.json").write_text(json.dumps({"key": "notakey", "ids": []}))
    fresh = AdapterStore(str(tmp_path / "adapters"))
    assert [e.key for e in fresh.entries()] == [key]
    with pytest.raises(ValueError, match="sha256"):
        store.get("../../etc/passwd")


def _writer(folder, key, data, rounds):
    from adir_storage import commit_bytes

    for _ in range(rounds):
        commit_bytes(os.path.join(folder, f"{key}.safetensors"), data)


def test_two_writers_racing_on_one_key_never_show_a_reader_a_broken_adapter(tmp_path, prior):
    folder = str(tmp_path / "adapters")
    key = "ef" * 32
    first, second = _adapter(prior, 1, key), _adapter(prior, 2, key)
    versions = [first.to_bytes(), second.to_bytes()]
    store = AdapterStore(folder)
    store.put(key, first, {"ids": ["x"], "uris": ["u"], "init": None})
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(folder, key, data, 150)) for data in versions]
    for w in writers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        adapter = store.get(key)
        assert adapter is not None  # never absent, never torn
        seen.add(adapter.to_bytes() == versions[0])
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert store.get(key) is not None and not [n for n in os.listdir(folder) if n.startswith(".")]


# ---------------------------------------------------------------- the pipeline with a cache
def _pipeline(prior, store, uris, warm=None):
    return ADIRPipeline(
        prior,
        GivenNeighbours([os.path.basename(u) for u in uris], uris),
        adaptation=LORA,
        sampler=SamplerConfig(name="ddnm", steps=3),
        adapters=store,
        warm_start=warm,
    )


def _run(pipe, image_id):
    truth01 = torch.from_numpy(smooth_picture(7, 24, 28).copy()).permute(2, 0, 1)[None].float().div(255)
    seen = observe("sr4", truth01, generator=torch.Generator().manual_seed(0))
    return pipe(seen.y, seen.operator, seed=3, image_id=image_id)


def test_an_image_with_neighbours_adapted_on_already_reads_that_adapter(tmp_path, prior, corpus):
    store = AdapterStore(str(tmp_path / "adapters"))
    pipe = _pipeline(prior, store, corpus[:3])
    first, second = _run(pipe, "one"), _run(pipe, "two")
    assert first.adaptation["source"] == "trained" and first.adaptation["steps"] == LORA.steps
    assert second.adaptation == {**first.adaptation, "source": "cache", "steps": 0}
    assert all(torch.equal(first.adapter.state_dict[k], v) for k, v in second.adapter.state_dict.items())
    # What the cache returns is what training would give: the neighbours' stream, not the image's.
    again = _run(_pipeline(prior, AdapterStore(str(tmp_path / "elsewhere")), corpus[:3]), "two")
    assert again.adaptation["source"] == "trained"
    assert all(torch.equal(again.adapter.state_dict[k], v) for k, v in second.adapter.state_dict.items())
    assert torch.equal(again.image01, second.image01)
    assert second.config["adapter_cache"] is True and second.config["warm_start"] is None


def test_warm_start_begins_from_the_overlapping_adapter_and_says_so(tmp_path, prior, corpus):
    store = AdapterStore(str(tmp_path / "adapters"))
    warm = WarmStart(min_overlap=0.5, steps=1)
    cold = _run(_pipeline(prior, store, corpus[:4], warm), "cold")
    assert cold.adaptation["init"] is None
    # 3 of 5 ids shared: Jaccard 0.6 >= 0.5, a warm start of 1 step from the cold adapter.
    near = _run(_pipeline(prior, store, corpus[:3] + corpus[4:5], warm), "near")
    assert near.adaptation["source"] == "trained" and near.adaptation["init"] == cold.adaptation["key"]
    assert near.adaptation["overlap"] == pytest.approx(0.6) and near.adaptation["steps"] == 1
    assert near.adapter.provenance["init"] == cold.adaptation["key"] and len(near.adapter.losses) == 1
    # Far (1 of 6 shared) starts cold; warm adapters are no warm-start source (no drifting chains).
    far = _run(_pipeline(prior, store, corpus[3:6], warm), "far")
    assert far.adaptation["init"] is None and far.adaptation["steps"] == LORA.steps
    assert {e.key for e in AdapterStore(str(tmp_path / "adapters")).entries()} == {
        cold.adaptation["key"],
        far.adaptation["key"],
    }
    # The same warm start again is an exact hit under its own key, which names its start.
    repeat = _run(_pipeline(prior, store, corpus[:3] + corpus[4:5], warm), "near-again")
    assert repeat.adaptation == {**near.adaptation, "source": "cache", "steps": 0}


# ---------------------------------------------------------------- the job's rows
def test_the_job_reads_a_cached_adapter_and_its_rows_say_which(tmp_path, corpus_and_index):
    from cluster.config import ReconstructConfig
    from cluster.worker import ReconstructionWorker
    from tests.cluster.helpers import job_options, write_pictures

    _, index = corpus_and_index
    # Two copies of one picture retrieve the same neighbours; a third picture may not.
    paths = write_pictures(str(tmp_path / "in"), [("a", 5), ("b", 5)])
    out = str(tmp_path / "out")
    config = ReconstructConfig(inputs=str(tmp_path / "in"), out=out, index=index, **job_options(adapter_cache=True))
    worker = ReconstructionWorker(config)
    rows = [worker.process({"image_id": n, "uri": p, "name": n}) for n, p in zip("ab", paths)]
    assert [r["error"] for r in rows] == [None, None]
    assert [r["adapter_source"] for r in rows] == ["trained", "cache"]
    assert rows[0]["adapter_key"] == rows[1]["adapter_key"] and rows[1]["lora_steps_run"] == 0
    assert rows[0]["lora_final_loss"] == rows[1]["lora_final_loss"]
    key = rows[0]["adapter_key"]
    assert set(os.listdir(os.path.join(out, "adapters"))) == {f"{key}.json", f"{key}.safetensors"}
    with pytest.raises(ValueError, match="add --adapter-cache"):
        ReconstructConfig(inputs="in", out="out", index=index, **job_options(warm_start=0.5))


def test_other_writers_adapters_appear_when_the_store_lists_again(tmp_path, prior):
    folder = str(tmp_path / "adapters")
    mine, theirs = AdapterStore(folder, relist_s=3600), AdapterStore(folder)
    assert mine.entries() == []
    key = "12" * 32
    theirs.put(key, _adapter(prior, 3, key), {"ids": ["p", "q"], "uris": ["u", "v"], "init": None})
    assert mine.entries() == []  # listed a moment ago: not again before relist_s
    assert [e.key for e in AdapterStore(folder, relist_s=0).entries()] == [key]
    mine.relist_s = 0
    assert [e.key for e in mine.entries()] == [key]


# ---------------------------------------------------------------- a tampered cache
def _tamper(path, how):
    """Rewrite a cached adapter file as an attacker would: weights changed (or metadata cut), the rest kept."""
    import struct

    from safetensors.torch import load, save

    data = open(path, "rb").read()
    metadata = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]
    tensors = load(data)
    if how == "scaled":  # lora_B x 1000, metadata kept
        tensors = {k: v * 1000 if "lora_B" in k else v for k, v in tensors.items()}
    elif how == "nan":
        tensors = {k: torch.full_like(v, float("nan")) if "lora_B" in k else v for k, v in tensors.items()}
    else:  # a metadata key gone
        ours = json.loads(metadata["adir_adapter"])
        del ours["adapt_config"]
        metadata["adir_adapter"] = json.dumps(ours)
    with open(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))


@pytest.mark.parametrize("how", ["scaled", "nan", "metadata-key-missing"])
def test_a_tampered_cache_entry_is_trained_again_and_replaced_never_used(tmp_path, prior, corpus, how, capsys):
    store = AdapterStore(str(tmp_path / "adapters"))
    first = _run(_pipeline(prior, store, corpus[:3]), "one")
    path = tmp_path / "adapters" / f"{first.adaptation['key']}.safetensors"
    _tamper(path, how)
    again = _run(_pipeline(prior, AdapterStore(str(tmp_path / "adapters")), corpus[:3]), "one")
    assert again.adaptation == first.adaptation  # trained, not read: the row says so
    assert torch.equal(again.image01, first.image01)  # the reconstruction a clean cache gives
    assert "not a usable cache entry" in capsys.readouterr().err
    # Replaced: the next image reads the fresh adapter.
    third = _run(_pipeline(prior, AdapterStore(str(tmp_path / "adapters")), corpus[:3]), "one")
    assert third.adaptation["source"] == "cache" and torch.equal(third.image01, first.image01)
