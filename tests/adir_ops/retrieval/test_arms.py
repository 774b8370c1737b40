"""The retrieval arms of Table 5: each returns K distinct neighbours of the corpus it was given, by its own rule."""

import numpy as np
import pytest
import torch

from adir_ops.retrieval.arms import (
    MODES,
    RETRIEVERS,
    EncoderKNN,
    GivenNeighbours,
    NoNeighbours,
    PixelMSENeighbours,
    RandomNeighbours,
    thumbnail_of,
)
from adir_ops.retrieval.embedders_offline import OfflineLowpassEmbedder

N, K, THUMB = 12, 4, 8


def smooth(n, seed, size=24):
    """n smooth colour fields (n, 3, size, size) in [0, 1]: distinct images an encoder can tell apart."""
    coarse = torch.rand(n, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def corpus():
    images = smooth(N, 0)
    ids = np.array([f"img{i:02d}" for i in range(N)], dtype=object)
    uris = np.array([f"s3://corpus/img{i:02d}.jpg" for i in range(N)], dtype=object)
    thumbs = np.stack([thumbnail_of(image, THUMB) for image in images])
    return {"images": images, "ids": ids, "uris": uris, "thumbs": thumbs}


class FlatIndex:
    """Exact inner-product search with index_builder's NeighborIndex signature; `holes` answers '' past that rank."""

    def __init__(self, embeddings, ids, uris, holes=None):
        self.embeddings, self.ids, self.uris, self.holes = embeddings, ids, uris, holes

    def __len__(self):
        return len(self.ids)

    def search(self, queries, k):
        scores = queries @ self.embeddings.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids, uris = self.ids[rows].copy(), self.uris[rows].copy()
        if self.holes is not None:  # an approximate index that found fewer than k
            ids[:, self.holes :], uris[:, self.holes :] = "", ""
        return ids, uris, np.take_along_axis(scores, rows, axis=1)


def assert_k_distinct_from(found, corpus, k):
    assert len(found) == k and len(set(found.ids)) == k
    rows = [list(corpus["ids"]).index(i) for i in found.ids]
    assert found.uris == [corpus["uris"][r] for r in rows]  # each uri is its id's


def test_every_mode_has_its_arm():
    assert set(MODES) | {"given"} == set(RETRIEVERS)
    assert all(RETRIEVERS[mode].mode == mode for mode in RETRIEVERS)


def test_encoder_knn_returns_the_k_nearest_in_the_encoders_space(corpus):
    embedder = OfflineLowpassEmbedder()
    index = FlatIndex(embedder.embed_images(corpus["images"]), corpus["ids"], corpus["uris"])
    arm = EncoderKNN(index, embedder, K)
    query = corpus["images"][5]
    found = arm.neighbours(query, query, torch.Generator().manual_seed(0))
    assert_k_distinct_from(found, corpus, K)
    assert found.ids[0] == "img05" and found.scores[0] == pytest.approx(1.0, abs=1e-5)  # itself, cosine 1
    assert found.scores == sorted(found.scores, reverse=True)


def test_encoder_knn_drops_the_empty_answers_of_an_approximate_index(corpus):
    embedder = OfflineLowpassEmbedder()
    index = FlatIndex(embedder.embed_images(corpus["images"]), corpus["ids"], corpus["uris"], holes=2)
    found = EncoderKNN(index, embedder, K).neighbours(corpus["images"][3], None, None)
    assert len(found) == 2 and "" not in found.ids and "" not in found.uris


def test_random_neighbours_depend_on_the_generator_only(corpus):
    arm = RandomNeighbours(corpus["ids"], corpus["uris"], K)
    y, other = corpus["images"][0], corpus["images"][1]
    first = arm.neighbours(y, y, torch.Generator().manual_seed(3))
    assert_k_distinct_from(first, corpus, K)
    assert first == arm.neighbours(other, other, torch.Generator().manual_seed(3))  # another image, same stream
    draws = {tuple(arm.neighbours(y, y, torch.Generator().manual_seed(s)).ids) for s in range(6)}
    assert len(draws) > 1  # the stream decides: other seeds give other sets
    every = RandomNeighbours(corpus["ids"], corpus["uris"], N).neighbours(y, y, torch.Generator().manual_seed(4))
    assert sorted(every.ids) == sorted(corpus["ids"])  # k = corpus size: each image once


def test_pixel_mse_neighbours_are_the_k_closest_thumbnails_and_skip_unreadable_ones(corpus):
    valid = np.ones(N, dtype=bool)
    arm = PixelMSENeighbours(corpus["ids"], corpus["uris"], corpus["thumbs"], valid, K)
    found = arm.neighbours(None, corpus["images"][7], None)
    assert_k_distinct_from(found, corpus, K)
    assert found.ids[0] == "img07" and found.scores[0] == 0.0
    features = corpus["thumbs"].reshape(N, -1).astype(np.float32) / 255
    mse = ((features - features[7]) ** 2).mean(axis=1)
    assert found.ids == list(corpus["ids"][np.argsort(mse, kind="stable")[:K]])
    assert found.scores == sorted(found.scores, reverse=True)
    valid[[7, 0, 1, 2, 3, 4, 5, 6, 8, 9]] = False  # two readable images left
    few = PixelMSENeighbours(corpus["ids"], corpus["uris"], corpus["thumbs"], valid, K)
    assert sorted(few.neighbours(None, corpus["images"][7], None).ids) == ["img10", "img11"]


def test_pixel_mse_for_colorization_compares_gray_levels_only(corpus):
    colour = corpus["images"][2]
    gray_query = colour.mean(dim=0, keepdim=True).expand(3, -1, -1)  # what colorize's naive inverse looks like
    valid = np.ones(N, dtype=bool)
    gray = PixelMSENeighbours(corpus["ids"], corpus["uris"], corpus["thumbs"], valid, K, gray=True)
    found = gray.neighbours(None, gray_query, None)
    assert found.ids[0] == "img02" and found.scores[0] == pytest.approx(0.0, abs=1e-4)
    in_colour = PixelMSENeighbours(corpus["ids"], corpus["uris"], corpus["thumbs"], valid, K)
    assert in_colour.neighbours(None, gray_query, None).scores[0] < -1e-3


def test_thumbnail_is_the_centre_square_resized_as_the_corpus_got_it():
    wide = torch.zeros(3, 10, 30)
    wide[:, :, 10:20] = 1.0  # only the centre square is white
    thumb = thumbnail_of(wide, 6)
    assert thumb.shape == (6, 6, 3) and thumb.dtype == np.uint8
    # The whole picture squeezed would be a third white; bicubic taps reach past the square's edge a little.
    assert thumb.mean() > 245 and (thumb[:, 1:-1] == 255).all()
    assert thumbnail_of(torch.full((1, 8, 8), 0.5), 4).shape == (4, 4, 3)  # gray as three equal channels


def test_baseline_and_given_lists():
    assert len(NoNeighbours().neighbours(None, None, None)) == 0
    given = GivenNeighbours(["a", "b"], ["s3://x/a", "s3://x/b"])
    found = given.neighbours(None, None, None)
    found.ids.append("c")  # a caller's edit of one answer does not change the arm's next
    assert given.neighbours(None, None, None).ids == ["a", "b"] and given.k == 2
    assert GivenNeighbours(["p.png"]).neighbours(None, None, None).uris == ["p.png"]  # ids are their uris


@pytest.mark.parametrize("k", [0, N + 1])
def test_k_outside_the_corpus_is_refused_with_its_size(corpus, k):
    with pytest.raises(ValueError, match=rf"k={k} but the corpus holds {N} images; ask for 1 <= k <= {N}"):
        RandomNeighbours(corpus["ids"], corpus["uris"], k)
    with pytest.raises(ValueError, match=rf"k={k} but the index at s3://i holds {N} images"):
        EncoderKNN(FlatIndex(None, corpus["ids"], corpus["uris"]), None, k, where="the index at s3://i")
