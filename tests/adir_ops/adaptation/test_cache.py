"""Amortized adaptation's bookkeeping: the key of what decides an adapter, its random stream, the warm-start choice.

That a tampered or unreadable entry is trained again (AdapterCache.get answers None) is the store's and
the pipeline's part: tests/cluster/test_adapters.py.
"""

import dataclasses

import pytest
import torch

from adir_ops.adaptation.cache import (
    CachedEntry,
    WarmStart,
    adaptation_stream,
    adapter_key,
    closest,
    jaccard,
)
from adir_ops.adaptation.config import AdaptConfig

LORA = AdaptConfig(steps=3, batch_size=2, learning_rate=1e-2)
PAIRS = [("a", "s3://corpus/a.jpg"), ("b", "s3://corpus/b.jpg")]


def test_the_key_changes_with_everything_that_decides_an_adapter_and_nothing_else():
    prior = {"source": "ffdnet", "valid_timesteps": 168}
    key = adapter_key(prior, PAIRS, LORA, 0)
    assert key == adapter_key(dict(prior), list(PAIRS), AdaptConfig(**LORA.to_dict()), 0)
    others = [
        adapter_key({**prior, "source": "tiny"}, PAIRS, LORA, 0),
        adapter_key(prior, PAIRS[::-1], LORA, 0),  # the order of the neighbours is the order of the crops' pool
        adapter_key(prior, [("a", "s3://other/a.jpg"), PAIRS[1]], LORA, 0),  # same id, another corpus
        adapter_key(prior, PAIRS, dataclasses.replace(LORA, steps=4), 0),
        adapter_key(prior, PAIRS, LORA, 1),
        adapter_key(prior, PAIRS, LORA, 0, init="f" * 64),
    ]
    assert len({key, *others}) == 1 + len(others)
    # The stream follows the neighbours the same way: equal lists draw alike, another order does not.
    draw = [torch.rand(4, generator=adaptation_stream(0, p)) for p in (PAIRS, list(PAIRS), PAIRS[::-1])]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


def test_closest_takes_the_largest_overlap_above_the_threshold():
    entries = [CachedEntry("2" * 64, frozenset("abcd")), CachedEntry("1" * 64, frozenset("abxy"))]
    assert jaccard("abcd", "abce") == pytest.approx(3 / 5)
    assert closest(entries, list("abce"), 0.5) == (entries[0], pytest.approx(0.6))
    assert closest(entries, list("abce"), 0.7) is None
    tie = closest(entries, list("ab"), 0.1)  # both 2/4: the smaller key, whatever the listing order
    assert tie[0].key == "1" * 64
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        WarmStart(min_overlap=1.5)


def test_the_key_is_a_sha256_of_content_not_of_how_the_prior_config_was_written():
    key = adapter_key({"source": "tiny", "seed": 0}, PAIRS, LORA, 0)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == adapter_key({"seed": 0, "source": "tiny"}, [list(p) for p in PAIRS], LORA, 0)
    # Ids and uris are whatever a corpus holds: undecodable file names (surrogates) hash too.
    odd = [("caf\udce9", "file:///c/caf\udce9.png")]
    assert adapter_key({}, odd, LORA, 0) != adapter_key({}, [("cafe", "file:///c/cafe.png")], LORA, 0)


def test_two_images_with_the_same_neighbours_share_one_stream_and_another_seed_does_not():
    first = torch.rand(6, generator=adaptation_stream(3, PAIRS))
    assert torch.equal(first, torch.rand(6, generator=adaptation_stream(3, [tuple(p) for p in PAIRS])))
    assert not torch.equal(first, torch.rand(6, generator=adaptation_stream(4, PAIRS)))
    # The uri counts as in the key: the same id in another corpus is another image.
    moved = [("a", "s3://other/a.jpg"), PAIRS[1]]
    assert not torch.equal(first, torch.rand(6, generator=adaptation_stream(3, moved)))


def test_overlap_threshold_is_inclusive_and_nothing_matches_an_empty_cache():
    entry = CachedEntry("0" * 64, frozenset("ab"))
    assert jaccard([], []) == 0.0
    assert closest([entry], list("abcd"), 0.5) == (entry, 0.5)  # exactly the threshold: taken
    assert closest([], list("ab"), 0.1) is None


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_overlap": 0}, r"in \(0, 1\]"),
        ({"min_overlap": float("nan")}, "must be a number"),
        ({"min_overlap": True}, "must be a number"),
        ({"steps": -1}, "steps must be an integer >= 0"),
        ({"steps": 2.0}, "steps must be an integer >= 0"),
    ],
)
def test_warm_start_settings_are_refused_in_their_own_words(options, message):
    with pytest.raises(ValueError, match=message):
        WarmStart(**options)
    assert WarmStart(min_overlap=1, steps=0) == WarmStart(1, 0)
