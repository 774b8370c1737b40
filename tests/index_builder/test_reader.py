"""The read stage: unusual-but-valid images decode to correct RGB; invalid ones fail with the right stage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from index_builder.reader import DecodeError, ReadConfig, decode_image, read_batch
from tests.index_builder.corpus import bomb_png, encode, invalid_images, unusual_images

SIZE = 16


def test_every_unusual_image_becomes_a_resized_rgb_array():
    for name, data in unusual_images().items():
        pixels, width, height = decode_image(data, SIZE)
        assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8, name
        assert width >= 1 and height >= 1, name


def test_16bit_png_is_scaled_to_8bit_not_clipped():
    mid = Image.fromarray(np.full((10, 12), 128 * 257, dtype=np.uint16))
    top = Image.fromarray(np.full((10, 12), 65535, dtype=np.uint16))
    assert np.all(decode_image(encode(mid, "PNG"), SIZE)[0] == 128)  # clipping would give 255
    assert np.all(decode_image(encode(top, "PNG"), SIZE)[0] == 255)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    assert np.all(decode_image(encode(rgba, "PNG"), SIZE)[0] == 255)
    opaque = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    assert np.all(decode_image(encode(opaque, "PNG"), SIZE)[0] == [0, 0, 255])
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    assert np.all(decode_image(encode(palette, "PNG"), SIZE)[0] == [10, 200, 30])
    assert np.all(decode_image(encode(palette, "PNG", transparency=0), SIZE)[0] == 255)


def test_cmyk_gray_and_one_pixel_images_keep_their_colours():
    red = Image.new("RGB", (24, 24), (220, 30, 30))
    got = decode_image(encode(red.convert("CMYK"), "JPEG", quality=95), SIZE)[0].astype(int)
    assert np.abs(got - [220, 30, 30]).max() <= 12
    gray = decode_image(encode(Image.new("L", (24, 24), 77), "JPEG", quality=95), SIZE)[0]
    assert (
        np.all(gray[..., 0] == gray[..., 1])
        and np.all(gray[..., 1] == gray[..., 2])
        and abs(int(gray[0, 0, 0]) - 77) <= 2
    )
    one, width, height = decode_image(encode(Image.new("RGB", (1, 1), (200, 40, 90)), "PNG"), SIZE)
    assert (width, height) == (1, 1) and np.all(one == [200, 40, 90])


def test_exif_orientation_is_applied_and_reported_in_width_height():
    a = np.zeros((40, 60, 3), dtype=np.uint8)
    a[:, 30:] = 255  # stored: left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half goes to the top
    pixels, width, height = decode_image(encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes()), SIZE)
    assert (width, height) == (40, 60)
    assert pixels[: SIZE // 2 - 2].mean() < 30 and pixels[SIZE // 2 + 2 :].mean() > 225


def test_big_jpeg_keeps_its_original_size_and_content():
    a = np.zeros((1600, 2400, 3), dtype=np.uint8)
    a[:800] = (250, 0, 0)  # top half red, bottom half black; the centre square keeps both
    pixels, width, height = decode_image(encode(Image.fromarray(a), "JPEG", quality=90), SIZE)
    assert (width, height) == (2400, 1600)
    assert pixels[2, SIZE // 2, 0] > 220 and pixels[-3, SIZE // 2].max() < 30


@pytest.mark.parametrize("name", sorted(invalid_images()))
def test_invalid_inputs_raise(name):
    data, _ = invalid_images()[name]
    with pytest.raises((DecodeError, OSError)):  # PIL's UnidentifiedImageError is an OSError
        decode_image(data, SIZE)


def test_pixel_limit_is_ours_and_explains_the_fix():
    with pytest.raises(DecodeError, match="max_image_pixels"):
        decode_image(bomb_png(), SIZE)
    small = encode(Image.new("RGB", (40, 30)), "PNG")
    with pytest.raises(DecodeError, match="max_image_pixels"):
        decode_image(small, SIZE, max_image_pixels=1000)
    assert decode_image(small, SIZE, max_image_pixels=1200)[1:] == (40, 30)


def test_read_batch_marks_each_failure_with_its_stage(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.new("RGB", (20, 10), (1, 2, 3)), "PNG"))
    html = tmp_path / "page.jpg"
    html.write_bytes(b"<html></html>")
    uris = [str(good), str(tmp_path / "missing.jpg"), str(html)]
    out = read_batch(
        {
            "image_id": np.array(["a", "b", "c"], dtype=object),
            "uri": np.array(uris, dtype=object),
            "shard": np.array([0, 0, 1]),
        },
        ReadConfig(image_size=SIZE, fetch_threads=2),
    )
    assert list(out["stage"]) == ["", "read", "decode"]
    assert out["error"][0] == "" and "FileNotFoundError" in out["error"][1] and out["error"][2]
    assert out["pixels"].shape == (3, SIZE, SIZE, 3) and np.all(out["pixels"][0] == [1, 2, 3])
    assert list(out["width"]) == [20, 0, 0] and list(out["height"]) == [10, 0, 0]
    assert list(out["shard"]) == [0, 0, 1]


def test_read_batch_runs_at_the_configured_lower_priority_and_never_raises_it(tmp_path):
    # In a thread of its own: Linux keeps nice values per thread, and pytest's must stay at 0.
    import os
    import threading

    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG"))
    batch = {
        "image_id": np.array(["a"], dtype=object),
        "uri": np.array([str(good)], dtype=object),
        "shard": np.array([0]),
    }
    seen = []

    def read(*nices):
        for nice in nices:
            out = read_batch(batch, ReadConfig(image_size=SIZE, fetch_threads=1, nice=nice))
            seen.append((os.getpriority(os.PRIO_PROCESS, 0), out["stage"][0]))

    thread = threading.Thread(target=read, args=(0, 7, 3))
    thread.start()
    thread.join()
    start = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen == [(start, ""), (max(start, 7), ""), (max(start, 7), "")]  # 3 after 7: not raised back
    assert os.getpriority(os.PRIO_PROCESS, 0) == start
