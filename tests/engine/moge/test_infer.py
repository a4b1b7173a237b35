"""`infer` against upstream MoGeModel.infer (tiny config, 3 option sets), input handling, and SAM 3D's pointmap."""
from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InputError
from engine.moge.infer import MoGeOutput, infer, num_tokens_for, sam3d_pointmap
from engine.moge.model import PRESETS
from tests.engine.parity import assert_close

# (output prefix, internal prefix, input key, infer kwargs) as in moge_v1_tiny.meta.json
CASES = [
    ("output", "internal", "image", dict(resolution_level=9, force_projection=False, apply_mask=True)),
    ("output_proj", "internal_proj", "image_batch", dict(num_tokens=20, force_projection=True, apply_mask=False)),
    ("output_fov", "internal_fov", "image", dict(resolution_level=0, fov_x=55.0, force_projection=True, apply_mask=True)),
]


@pytest.fixture(scope="module")
def outputs(tiny, golden) -> dict[str, MoGeOutput]:
    return {prefix: infer(tiny, golden[f"input.{key}"], **kwargs) for prefix, _, key, kwargs in CASES}


def assert_matches_golden(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """The README's check: inf positions exact, finite values |Δ| ≤ 2e-5·max|golden finite|."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.equal(torch.isposinf(actual), torch.isposinf(expected)), f"{what}: +inf positions differ"
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), finite), f"{what}: finite positions differ"
    scale = expected[finite].abs().max().item()
    assert_close(actual[finite], expected[finite], atol=2e-5 * scale, rtol=0, what=what)


@pytest.mark.parametrize("prefix,internal,input_key,kwargs", CASES, ids=[c[0] for c in CASES])
def test_infer_matches_upstream(outputs, golden, prefix, internal, input_key, kwargs):
    out = outputs[prefix]
    assert out.mask.dtype == torch.bool
    assert torch.equal(out.mask, golden[f"{prefix}.mask"].bool()), f"{prefix}.mask differs"
    assert_matches_golden(out.points_cv, golden[f"{prefix}.points"], f"{prefix}.points")
    assert_matches_golden(out.depth, golden[f"{prefix}.depth"], f"{prefix}.depth")
    assert_matches_golden(out.intrinsics, golden[f"{prefix}.intrinsics"], f"{prefix}.intrinsics")
    focal, shift = out.focal.reshape(-1), out.shift.reshape(-1)
    assert_close(focal, golden[f"{internal}.focal"], atol=0, rtol=1e-5, what=f"{internal}.focal")
    assert_close(shift, golden[f"{internal}.shift"], atol=0, rtol=1e-5, what=f"{internal}.shift")
    if kwargs["apply_mask"]:
        assert torch.isposinf(out.points_cv[~out.mask]).all() and torch.isposinf(out.depth[~out.mask]).all()
        assert torch.isfinite(out.points_cv[out.mask]).all()


def test_token_counts_follow_the_resolution_level():
    assert num_tokens_for(9, (12, 30)) == 30
    assert num_tokens_for(0, (12, 30)) == 12
    assert num_tokens_for(9, PRESETS["official"].num_tokens_range) == 2551  # the public model at level 9
    assert num_tokens_for(4.5, (1275, 2551)) == 1913


def test_grey_image_equals_its_rgb_repetition(tiny):
    g = torch.Generator().manual_seed(11)
    grey = torch.rand(1, 37, 51, generator=g)
    a = infer(tiny, grey, num_tokens=16)
    b = infer(tiny, grey.expand(3, -1, -1).clone(), num_tokens=16)
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.points_cv, b.points_cv)


def test_odd_sized_images_give_full_size_outputs(tiny):
    g = torch.Generator().manual_seed(12)
    image = torch.rand(2, 3, 33, 71, generator=g)
    out = infer(tiny, image, resolution_level=5)
    assert out.points_cv.shape == (2, 33, 71, 3)
    assert out.depth.shape == out.mask.shape == (2, 33, 71)
    assert out.intrinsics.shape == (2, 3, 3) and out.focal.shape == out.shift.shape == (2,)
    assert torch.isfinite(out.points_cv[out.mask]).all()


_G = torch.Generator().manual_seed(13)


@pytest.mark.parametrize(
    "image,kwargs,needle",
    [
        (torch.rand(4, 20, 20, generator=_G), {}, "channels"),  # RGBA
        (torch.rand(20, 20, generator=_G), {}, "(3, H, W)"),  # no channel dim
        ((torch.rand(3, 20, 20, generator=_G) * 255).to(torch.uint8), {}, "255"),
        (torch.rand(3, 2, 4000, generator=_G), {}, "too elongated"),
        (torch.rand(3, 0, 20, generator=_G), {}, "empty"),
        (torch.rand(3, 20, 20, generator=_G) / torch.tensor([1.0, 0.0, 1.0])[:, None, None], {}, "infinite"),
        (torch.rand(3, 20, 20, generator=_G), {"resolution_level": 10}, "resolution_level"),
        (torch.rand(3, 20, 20, generator=_G), {"num_tokens": 0}, "num_tokens"),
        (torch.rand(3, 20, 20, generator=_G), {"fov_x": 180.0}, "fov_x"),
        (torch.rand(2, 3, 20, 20, generator=_G), {"fov_x": torch.tensor([50.0, 60.0, 70.0])}, "fov_x"),
    ],
)
def test_unusable_inputs_are_refused_with_a_named_error(tiny, image, kwargs, needle):
    with pytest.raises(InputError) as err:
        infer(tiny, image, **kwargs)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_sam3d_pointmap_is_the_pytorch3d_frame_with_pixel_intrinsics(tiny, golden):
    image = golden["input.image"]  # (3, 70, 98)
    out = infer(tiny, image, force_projection=True, apply_mask=False)  # exact projection, no infs
    pm = sam3d_pointmap(out)
    height, width = 70, 98
    assert pm.points_p3d.shape == (height, width, 3) and pm.intrinsics_px.shape == (4,)
    valid = out.mask
    assert torch.isposinf(pm.points_p3d[~valid]).all()
    assert torch.equal(pm.points_p3d[valid], out.points_cv[valid] * torch.tensor([-1.0, -1.0, 1.0]))
    fx, fy, cx, cy = pm.intrinsics_px.tolist()
    assert (cx, cy) == (width / 2, height / 2)
    assert math.isclose(fx, out.intrinsics[0, 0].item() * width, rel_tol=1e-6)
    # A PyTorch3D point (x left, y up) projects onto its pixel centre with u = −fx·x/z + cx, v = −fy·y/z + cy.
    p = pm.points_p3d
    u = -fx * p[..., 0] / p[..., 2] + cx
    v = -fy * p[..., 1] / p[..., 2] + cy
    assert torch.allclose(u[valid], (torch.arange(width) + 0.5).expand(height, width)[valid], atol=1e-3)
    assert torch.allclose(v[valid], (torch.arange(height)[:, None] + 0.5).expand(height, width)[valid], atol=1e-3)


def test_sam3d_pointmap_of_sam3ds_call_keeps_the_masked_points(tiny, golden):
    out = infer(tiny, golden["input.image_batch"], force_projection=False)  # SAM 3D's options
    pm = sam3d_pointmap(out)
    assert pm.points_p3d.shape == (2, 56, 42, 3) and pm.intrinsics_px.shape == (2, 4)
    assert torch.isposinf(pm.points_p3d[~out.mask]).all()
    assert torch.equal(pm.points_p3d[..., 2][out.mask], out.depth[out.mask])
    assert torch.equal(pm.points_p3d[..., :2][out.mask], -out.points_cv[..., :2][out.mask])


def test_sam3d_pointmap_marks_every_invalid_pixel_positive_inf_in_all_coordinates():
    g = torch.Generator().manual_seed(14)
    points_cv = torch.randn(5, 6, 3, generator=g)
    points_cv[0, 0] = math.inf  # what apply_mask writes
    points_cv[1, 2, 0] = float("nan")  # a broken point under the mask
    mask = torch.rand(5, 6, generator=g) > 0.3
    mask[0, 0] = False
    mask[1, 2] = True
    focal = torch.tensor(1.2)
    out = MoGeOutput(points_cv, points_cv[..., 2], mask, torch.eye(3), focal, torch.tensor(0.1))
    pm = sam3d_pointmap(out)
    invalid = ~mask | ~torch.isfinite(points_cv).all(-1)
    assert torch.isposinf(pm.points_p3d[invalid]).all()
    assert torch.equal(pm.points_p3d[~invalid], points_cv[~invalid] * torch.tensor([-1.0, -1.0, 1.0]))
