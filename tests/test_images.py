"""Safe decoding: every odd-but-valid photo becomes upright RGB; every bad one a clear ImageError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossmodal.sources.images import HEIF, ImageError, load_image


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_transparency_becomes_white(tmp_path: Path) -> None:
    arr = np.zeros((10, 10, 4), dtype=np.uint8)
    arr[:, :5] = (0, 0, 255, 255)  # opaque blue left half, transparent right half
    path = tmp_path / "alpha.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = np.asarray(load_image(path))
    assert out.shape == (10, 10, 3)
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[0, 9]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 4, 8))
    path = tmp_path / "pal.png"
    im.save(path, transparency=0)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 7]) == (255, 255, 255)


def test_cmyk_grayscale_and_16_bit(tmp_path: Path) -> None:
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = np.asarray(load_image(tmp_path / "cmyk.jpg"))[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    Image.new("L", (6, 6), 77).save(tmp_path / "gray.png")
    assert tuple(np.asarray(load_image(tmp_path / "gray.png"))[0, 0]) == (77, 77, 77)
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    deep = load_image(tmp_path / "deep.png")
    assert deep.mode == "RGB" and tuple(np.asarray(deep)[0, 0]) == (255, 255, 255)


def test_bytes_input_matches_path_input(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (5, 5), (1, 2, 3)).save(path)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), np.asarray(load_image(path)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"this is not an image at all" * 10, "not a readable image"),
    ],
)
def test_unreadable_files_raise_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_pixel_cap_refuses_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageError, match="over the 0 MP limit"):
        load_image(path, max_pixels=50_000)
    assert load_image(path, max_pixels=60_000).size == (300, 200)


def test_large_jpeg_is_decoded_reduced(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path)
    out = load_image(path)
    assert max(out.size) < 4000 and out.size[0] / out.size[1] == pytest.approx(4 / 3, rel=0.01)


@pytest.mark.skipif(not HEIF, reason="pillow-heif not installed")
def test_heic(tmp_path: Path) -> None:
    path = tmp_path / "phone.heic"
    Image.new("RGB", (32, 16), (200, 20, 20)).save(path, format="HEIF")
    out = load_image(path)
    assert out.size == (32, 16) and np.asarray(out)[8, 16, 0] > 150
