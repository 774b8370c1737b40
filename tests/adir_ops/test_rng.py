"""Per-image random streams: an image's draws depend on (run seed, image id) alone, never on its batch."""

import pytest
import torch

from adir_ops.rng import STREAMS, as_generator_list, generator_for, image_seed, image_streams, randn_per_image


def test_an_images_seed_is_the_same_in_every_process_machine_and_version():
    # Pinned: a rerun of a dataset (or a resumed job on another machine) must give each image
    # the stream it had before. A change here changes every published result.
    assert image_seed(0, "img-0001") == 4184502739319639289
    assert image_seed(1, "img-0001") == 5019224584746396878
    assert 0 <= image_seed(2**40, "ü/ünïcode id.png") < 2**63


def test_the_same_seed_and_image_id_give_the_same_draws_and_other_images_other_draws():
    draw = lambda seed, image_id: torch.rand(8, generator=generator_for(seed, image_id))  # noqa: E731
    assert generator_for(0, "a").device == torch.device("cpu")
    assert torch.equal(draw(0, "a"), draw(0, "a"))
    assert not torch.equal(draw(0, "a"), draw(0, "b"))
    assert not torch.equal(draw(0, "a"), draw(1, "a"))


def test_an_images_noise_is_the_same_alone_and_anywhere_in_any_batch():
    ids = ["a", "b", "c"]
    batch = randn_per_image((3, 2, 4, 4), [generator_for(7, i) for i in ids])
    reordered = randn_per_image((3, 2, 4, 4), [generator_for(7, i) for i in ["c", "a", "b"]])
    for k, image_id in enumerate(ids):
        alone = randn_per_image((1, 2, 4, 4), generator_for(7, image_id))
        assert torch.equal(batch[k], alone[0])
        assert torch.equal(reordered[(k + 1) % 3], alone[0])
    assert not torch.equal(batch[0], batch[1])


def test_draws_come_from_the_given_generators_only_and_in_the_dtype_asked():
    before = torch.get_rng_state()
    x = randn_per_image((2, 5), [generator_for(0, "a"), generator_for(0, "b")], dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), before)
    assert x.dtype == torch.float64
    assert torch.equal(x[1], torch.randn(5, generator=generator_for(0, "b"), dtype=torch.float64))


def test_one_generator_serves_one_image_only():
    g = generator_for(0, "a")
    assert as_generator_list(g, 1) == [g]
    with pytest.raises(ValueError, match="one torch.Generator for a batch of 2 images; pass a list of 2 generators"):
        as_generator_list(g, 2)
    with pytest.raises(ValueError, match="got 1 generators for a batch of 3 images; pass one per image"):
        randn_per_image((3, 4), [g])
    assert as_generator_list((generator_for(0, i) for i in "ab"), 2)[1].initial_seed() == image_seed(0, "b")


def test_each_stage_of_an_image_draws_from_its_own_stream_and_sampling_keeps_the_bare_id():
    streams = image_streams(0, "img-0001")
    assert tuple(streams) == STREAMS
    draws = {stage: torch.rand(4, generator=g) for stage, g in streams.items()}
    assert len({tuple(d.tolist()) for d in draws.values()}) == len(STREAMS)  # no two stages share draws
    # Sampling's stream is the one results were made with before the other stages had theirs.
    assert streams["sampling"].initial_seed() == image_seed(0, "img-0001")
    again = image_streams(0, "img-0001")
    assert all(torch.equal(torch.rand(4, generator=again[s]), draws[s]) for s in STREAMS)
