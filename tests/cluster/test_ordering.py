"""Embedding order: similar images adjacent, one run per actor, unreadable inputs last."""

import numpy as np
import pytest

from cluster.ordering import embedding_order, interleave_runs, order_items
from tests.cluster.helpers import write_pictures

pytestmark = pytest.mark.timeout(120)


def _clusters(seed=0):
    """Three tight clusters of 8 unit vectors each, rows shuffled; returns (vectors, cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16))
    labels = rng.permutation(np.repeat(np.arange(3), 8))
    vectors = centres[labels] + 0.05 * rng.normal(size=(24, 16))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_similar_rows_end_up_next_to_each_other():
    vectors, labels = _clusters()
    order = embedding_order(vectors, seed=0)
    assert sorted(order) == list(range(24))
    runs = [labels[i] for i in order]
    # Each cluster is one contiguous stretch: the label changes exactly twice along the order.
    assert sum(a != b for a, b in zip(runs, runs[1:])) == 2
    assert order == embedding_order(vectors, seed=0)
    # Input order, for contrast, mixes them.
    assert sum(a != b for a, b in zip(labels, labels[1:])) > 2


def test_runs_are_dealt_out_one_per_actor():
    assert interleave_runs(list(range(10)), 2) == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    assert interleave_runs([4, 2, 7], 5) == [4, 2, 7]
    assert interleave_runs(list(range(5)), 1) == list(range(5))


def test_items_are_ordered_by_content_and_an_unreadable_one_goes_last(tmp_path):
    folder = tmp_path / "in"
    # Pictures 0/1 and 2/3 are the same pictures (same seeds): each pair must be adjacent in one run.
    paths = write_pictures(str(folder), [("a", 1), ("b", 2), ("c", 1), ("d", 2), ("e", 3)])
    (folder / "broken.png").write_bytes(b"not an image")
    items = [{"image_id": p, "uri": p, "name": p} for p in paths]
    items.insert(2, {"image_id": "broken", "uri": str(folder / "broken.png"), "name": "broken"})
    ordered = order_items(items, "offline-content", actors=1)
    names = [i["uri"].rsplit("/", 1)[-1] for i in ordered]
    assert sorted(names) == sorted(i["uri"].rsplit("/", 1)[-1] for i in items)
    assert names[-1] == "broken.png"
    position = {n: k for k, n in enumerate(names)}
    assert abs(position["a.png"] - position["c.png"]) == 1 and abs(position["b.png"] - position["d.png"]) == 1
