"""Regional retrieval: a large image's neighbours are the union of its windows', rank by rank, so every region is represented."""

import numpy as np
import pytest
import torch

from adir_ops.retrieval.arms import EncoderKNN
from adir_ops.retrieval.embedders_offline import OfflineLowpassEmbedder
from adir_ops.retrieval.regions import merge_by_rank, query_windows, window_side
from tests.adir_ops.retrieval.test_arms import FlatIndex, smooth

N = 12


@pytest.fixture(scope="module")
def corpus():
    images = smooth(N, 0)
    ids = np.array([f"img{i:02d}" for i in range(N)], dtype=object)
    uris = np.array([f"s3://corpus/img{i:02d}.jpg" for i in range(N)], dtype=object)
    embedder = OfflineLowpassEmbedder()
    return images, FlatIndex(embedder.embed_images(images), ids, uris), embedder


def as_array(rows):
    return np.array(rows, dtype=object)


def test_merge_takes_every_windows_best_first_and_counts_a_shared_neighbour_once():
    ids = as_array([["a", "b", "c"], ["d", "a", "e"], ["f", "", "g"]])
    uris = as_array([[f"u/{i}" for i in row] for row in ids])
    scores = np.array([[0.9, 0.5, 0.4], [0.95, 0.6, 0.3], [0.7, 0.0, 0.2]])
    found, found_uris, found_scores = merge_by_rank(ids, uris, scores, 5)
    # Rank 1 by score (d, a, f), then rank 2: a is taken already, the hole is skipped; rank 3: c.
    assert found == ["d", "a", "f", "b", "c"]
    assert found_uris == [f"u/{i}" for i in found] and found_scores == [0.95, 0.9, 0.7, 0.5, 0.4]
    assert merge_by_rank(ids, uris, scores, 2)[0] == ["d", "a"]
    assert merge_by_rank(ids, uris, scores, 50)[0] == ["d", "a", "f", "b", "c", "e", "g"]  # fewer than k exist


def test_windows_cover_y_evenly_on_its_own_grid():
    y = torch.rand(3, 100, 160)
    assert window_side((100, 160), (400, 640), 256) == 64  # SR x4: 256 output px are 64 px of y
    crops = query_windows(y, (400, 640), 256)
    assert crops.shape == (2 * 3, 3, 50, 54)  # the fewest equal windows of at most 64 px
    assert torch.equal(crops[0], y[:, :50, :54]) and torch.equal(crops[-1], y[:, 50:, 106:])
    assert torch.equal(query_windows(y, (400, 640), 640)[0], y)  # within the region: y itself, once
    assert query_windows(y, (400, 640), 640).shape[0] == 1


def test_a_two_scene_image_finds_both_scenes_by_regions_and_is_unchanged_when_small(corpus):
    images, index, embedder = corpus
    left, right = images[2], images[7]
    y = torch.cat([left, right], dim=-1)  # (3, 24, 48): two corpus scenes side by side
    generator = torch.Generator().manual_seed(0)
    regional = EncoderKNN(index, embedder, 2, region=24).neighbours(y, y, generator)
    assert set(regional.ids) == {"img02", "img07"}
    assert regional.scores == pytest.approx([1.0, 1.0], abs=1e-5)  # each window is its scene exactly
    whole = EncoderKNN(index, embedder, 2).neighbours(y, y, generator)
    assert set(whole.ids) != {"img02", "img07"}  # the whole image's gist is neither scene
    # SR: y is 4x smaller than the image; the region is counted in the image's pixels.
    small = torch.nn.functional.avg_pool2d(y[None], 4)[0]
    assert set(EncoderKNN(index, embedder, 2, region=24).neighbours(small, y, generator).ids) == {"img02", "img07"}
    # An image within the region is queried exactly as without regions.
    one = images[5]
    assert EncoderKNN(index, embedder, 4, region=64).neighbours(one, one, generator) == EncoderKNN(
        index, embedder, 4
    ).neighbours(one, one, generator)
