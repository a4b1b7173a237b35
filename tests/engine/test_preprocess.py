import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.preprocess import PreprocessConfig, crop_box, object_centric_scale_shift, preprocess_object
from tests.engine.parity import assert_close, load_case


def _official_inputs():
    case = load_case("preprocess")
    rgba = case.inputs["rgba_uint8"].permute(2, 0, 1).float() / 255
    return case, rgba[:3], rgba[3], case.inputs["pointmap_hw3"].permute(2, 0, 1)


def test_matches_the_official_preprocessing_for_both_stages():
    case, rgb, mask, pointmap = _official_inputs()
    assert crop_box(mask, 1.2) == tuple(case.meta["crop_bbox_x1y1x2y2"])
    out = preprocess_object(rgb, mask, pointmap, PreprocessConfig(size=56))
    for stage, tensors in (("ss", out.ss), ("slat", out.slat)):
        for name, value in tensors.items():
            assert_close(value, case.outputs[f"{stage}.{name}"], 1e-6, 1e-6, f"{stage}.{name}")
    assert_close(out.pointmap_scale, case.outputs["ss.pointmap_scale"], 1e-6, 1e-6, "scale")
    assert_close(out.pointmap_shift, case.outputs["ss.pointmap_shift"], 1e-6, 1e-6, "shift")


def test_normalised_points_are_centred_on_the_object():
    g = torch.Generator().manual_seed(1)
    h, w = 40, 60
    points = torch.randn(3, h, w, generator=g) * 0.2 + torch.tensor([0.3, -0.1, 2.5])[:, None, None]
    mask = torch.zeros(h, w)
    mask[10:20, 15:40] = 1
    scale, shift = object_centric_scale_shift(points, mask)
    inside = points[:, mask > 0.5]
    assert torch.allclose(shift, inside.median(dim=1).values)
    assert scale > 0


def test_a_pointmap_with_no_valid_point_under_the_mask_is_refused():
    h, w = 32, 32
    points = torch.full((3, h, w), float("inf"))
    mask = torch.zeros(h, w)
    mask[8:20, 8:20] = 1
    with pytest.raises(InputError, match="no valid point"):
        object_centric_scale_shift(points, mask)
    with pytest.raises(InputError, match="no valid point"):
        object_centric_scale_shift(torch.full((3, h, w), float("nan")), mask)
