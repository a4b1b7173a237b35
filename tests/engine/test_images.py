import numpy as np
import pytest

from engine.errors import InputError
from engine.images import load_image, to_mask, to_rgb_float


def _rgb8(seed=0):
    return (np.random.default_rng(seed).random((20, 30, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "convert",
    [
        lambda im: np.concatenate([im, np.full(im.shape[:2] + (1,), 77, np.uint8)], axis=2),  # RGBA: alpha ignored
        lambda im: im.astype(np.uint16) * 257,  # 16 bit
        lambda im: im.astype(np.float32) / 255,  # float
        lambda im: im.astype(np.float64) / 255,
    ],
    ids=["rgba", "uint16", "float32", "float64"],
)
def test_every_supported_format_reads_as_the_same_rgb(convert):
    image = _rgb8()
    np.testing.assert_allclose(to_rgb_float(convert(image)), image / 255.0, atol=1e-6)


def test_grey_pictures_become_three_equal_channels():
    grey = _rgb8()[:, :, 0]
    for g in (grey, grey[:, :, None]):
        out = to_rgb_float(g)
        assert out.shape == (20, 30, 3) and (out[:, :, 0] == out[:, :, 2]).all()


def test_hdr_values_are_clipped_and_nan_cleared():
    image = np.random.default_rng(1).normal(0.5, 2.0, (20, 30, 3)).astype(np.float32)
    image[0, 0] = np.nan
    out = to_rgb_float(image)
    assert out.min() >= 0 and out.max() <= 1 and np.isfinite(out).all()


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros((20, 30, 5), np.uint8), "expected"), (np.zeros((8, 30, 3), np.uint8), "at least 16"),
     (np.zeros((20, 30, 3), np.int64), "dtype"), (np.zeros((20, 30, 3), bool), "dtype")],
)
def test_unusable_pictures_are_refused(bad, message):
    with pytest.raises(InputError, match=message):
        to_rgb_float(bad)


def test_masks_keep_soft_edges_and_read_alpha():
    rng = np.random.default_rng(2)
    soft = rng.random((20, 30)).astype(np.float32)
    np.testing.assert_array_equal(to_mask(soft, (20, 30)), soft)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:10, 5:10, 3] = 255
    assert to_mask(rgba, (20, 30)).sum() == 25
    assert to_mask(rgba[:, :, 3] > 0, (20, 30)).sum() == 25


def test_a_file_that_is_not_an_image_is_refused_by_name(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_text("not a picture")
    with pytest.raises(InputError, match="photo.png"):
        load_image(bad)
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_a_16_bit_png_keeps_its_precision(tmp_path):
    from PIL import Image

    values = (np.random.default_rng(3).random((20, 30)) * 65535).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "depth16.png")
    out = load_image(tmp_path / "depth16.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, values)
