"""The pipeline end to end on CPU with the tiny preset and seeded random weights."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.errors import Cancelled, InputError
from engine.pipeline import STAGES, Pipeline
from engine.postprocess import PostprocessOptions


def _scene(h: int = 48, w: int = 64, seed: int = 0):
    """A random picture, an elliptic mask, and a pointmap (OpenGL frame) of a bump on a wall 2 m away."""
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 < 1
    f = 1.2 * w
    depth = 2.0 - 0.3 * mask
    pointmap = np.stack(
        [(xx + 0.5 - w / 2) / f * depth, -(yy + 0.5 - h / 2) / f * depth, -depth], axis=-1
    ).astype(np.float32)
    return image, mask, pointmap


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_source("random", "tiny", device="cpu", seed=3)


def test_reconstructs_posed_meshes_and_gaussians_for_two_masks(pipe):
    image, mask, pointmap = _scene()
    second = np.zeros_like(mask)
    second[5:15, 5:20] = True
    stages = []
    result = pipe.reconstruct(image, [mask, second], pointmap=pointmap, seed=7, quality="fast",
                              progress=lambda s, f: stages.append(s),
                              postprocess=PostprocessOptions(faces=2000, texture_size=512))
    assert [o.mask_index for o in result.objects] == [0, 1]
    for obj in result.objects:
        raw = obj.raw_mesh
        assert raw is not None and len(raw.faces) > 2000
        assert np.abs(raw.vertices).max() <= 0.5 + 1 / 256  # object-local frame (+ FlexiCubes deform)
        assert raw.vertex_colors.shape == raw.vertices.shape
        mesh = obj.mesh  # post-processed: decimated, unwrapped, textured
        assert 0 < len(mesh.faces) <= 2000 and mesh.texture.shape == (512, 512, 3)
        assert mesh.uvs.shape == (len(mesh.vertices), 2) and (0 <= mesh.uvs).all() and (mesh.uvs <= 1).all()
        assert obj.gaussians is not None and len(obj.gaussians) == 32 * obj.num_voxels
        m = obj.object_to_camera
        rot = m[:3, :3] / np.cbrt(np.linalg.det(m[:3, :3]))
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)
    assert set(stages) == set(STAGES)
    # The camera looks down -Z in the OpenGL frame; the intrinsics come from the pointmap (f = 1.2 w).
    assert result.pointmap_source == "given"
    np.testing.assert_allclose(result.intrinsics[0, 0], 1.2 * 64, rtol=1e-3)


def test_the_same_seed_reproduces_and_another_seed_differs(pipe):
    image, mask, pointmap = _scene()
    a = pipe.reconstruct(image, [mask], pointmap=pointmap, seed=11, quality="fast", outputs=("gaussians",))
    b = pipe.reconstruct(image, [mask], pointmap=pointmap, seed=11, quality="fast", outputs=("gaussians",))
    c = pipe.reconstruct(image, [mask], pointmap=pointmap, seed=12, quality="fast", outputs=("gaussians",))
    np.testing.assert_array_equal(a.objects[0].gaussians.xyz, b.objects[0].gaussians.xyz)
    np.testing.assert_array_equal(a.objects[0].object_to_camera, b.objects[0].object_to_camera)
    assert not np.array_equal(a.objects[0].object_to_camera, c.objects[0].object_to_camera)


def test_injected_noise_replaces_the_seed(pipe):
    image, mask, pointmap = _scene()
    first = pipe.reconstruct(image, [mask], pointmap=pointmap, seed=5, quality="fast", outputs=("gaussians",))
    raw = first.objects[0].raw
    g = torch.Generator().manual_seed(99)
    shapes = {k[len("stage1."):]: v.shape for k, v in raw.items() if k.startswith("stage1.")}
    noise = {"stage1": {k: torch.randn(s, generator=g) for k, s in shapes.items()},
             "stage2": None}
    with pytest.raises(InputError, match="stage-2 noise"):
        noise["stage2"] = torch.randn(1, 3, 8, generator=g)
        pipe.reconstruct(image, [mask], pointmap=pointmap, seed=5, quality="fast", noise=[noise])


def test_a_16_bit_rgba_picture_gives_the_same_result_as_its_8_bit_rgb(pipe):
    image, mask, pointmap = _scene()
    rgba16 = np.concatenate([image, np.full(image.shape[:2] + (1,), 200, np.uint8)], axis=2).astype(np.uint16) * 257
    ref = pipe.reconstruct(image, [mask], pointmap=pointmap, seed=2, quality="fast", outputs=("gaussians",))
    out = pipe.reconstruct(rgba16, [mask], pointmap=pointmap, seed=2, quality="fast", outputs=("gaussians",))
    np.testing.assert_allclose(out.objects[0].object_to_camera, ref.objects[0].object_to_camera, atol=1e-5)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "mask 1 is empty"),
        ("size", "masks must have the image's size"),
        ("no_masks", "no mask given"),
        ("nan_pointmap", "no finite point"),
        ("inf_pointmap", "no finite point"),
        ("pointmap_shape", "pointmap has shape"),
        ("tiny_image", "at least 16 pixels"),
        ("quality", "unknown quality"),
        ("outputs", "outputs must be"),
        ("invalid_under_mask", "no valid point under the mask"),
    ],
)
def test_bad_input_is_refused_with_a_message_that_names_it(pipe, case, message):
    image, mask, pointmap = _scene()
    kwargs = dict(pointmap=pointmap, quality="fast")
    masks = [mask]
    if case == "empty":
        masks = [np.zeros_like(mask)]
    elif case == "size":
        masks = [mask[:, :-1]]
    elif case == "no_masks":
        masks = []
    elif case == "nan_pointmap":
        kwargs["pointmap"] = np.full_like(pointmap, np.nan)
    elif case == "inf_pointmap":
        kwargs["pointmap"] = np.full_like(pointmap, np.inf)
    elif case == "pointmap_shape":
        kwargs["pointmap"] = pointmap[:-2]
    elif case == "tiny_image":
        image, masks = image[:8, :8], [mask[:8, :8]]
    elif case == "quality":
        kwargs["quality"] = "ultra"
    elif case == "outputs":
        kwargs["outputs"] = ("voxels",)
    elif case == "invalid_under_mask":
        kwargs["pointmap"] = np.where(mask[:, :, None], np.nan, pointmap).astype(np.float32)
    with pytest.raises(InputError, match=message):
        pipe.reconstruct(image, masks, **kwargs)


@pytest.mark.parametrize("mask_kind", ["one_pixel", "full_frame", "two_regions", "soft"])
def test_unusual_masks_still_give_an_object(pipe, mask_kind):
    image, mask, pointmap = _scene()
    if mask_kind == "one_pixel":
        mask = np.zeros_like(mask)
        mask[20, 30] = True
    elif mask_kind == "full_frame":
        mask = np.ones_like(mask)
    elif mask_kind == "two_regions":
        mask = np.zeros_like(mask)
        mask[5:12, 5:12] = True
        mask[30:40, 45:60] = True
    elif mask_kind == "soft":
        mask = mask.astype(np.float32) * 0.8 + 0.1  # non-binary: soft values are kept, > 0.5 counts as inside
    result = pipe.reconstruct(image, [mask], pointmap=pointmap, seed=1, quality="fast", outputs=("gaussians",))
    assert np.isfinite(result.objects[0].object_to_camera).all()


@pytest.mark.parametrize("stage", STAGES[1:])
def test_a_cancel_during_any_stage_stops_the_run_and_frees_the_networks(stage):
    pipe = Pipeline.from_source("random", "tiny", device="cpu", keep_loaded=False, seed=3)
    image, mask, pointmap = _scene()
    cancel = threading.Event()
    seen = []

    def progress(name, fraction):
        seen.append(name)
        if name == stage:
            cancel.set()

    with pytest.raises(Cancelled):
        pipe.reconstruct(image, [mask], pointmap=pointmap, quality="fast", progress=progress, cancel=cancel)
    later = STAGES[STAGES.index(stage) + 1:]
    assert not set(seen) & set(later), f"stages after {stage} still ran: {seen}"
    assert pipe.models.loaded == ()


def test_weights_that_do_not_fit_the_preset_are_refused_naming_the_source_and_network():
    from engine.config import preset
    from engine.errors import WeightsError
    from engine.weights.sources import random_provider

    tiny = random_provider(preset("tiny"), seed=0)

    def wrong(name):  # one key renamed: a checkpoint of another version
        state = dict(tiny(name))
        state["renamed." + next(iter(state))] = state.pop(next(iter(state)))
        return state

    pipe = Pipeline(preset("tiny"), wrong, device="cpu", weights_id="/weights/elsewhere")
    image, mask, pointmap = _scene()
    with pytest.raises(WeightsError, match=r"/weights/elsewhere: the weights do not fit ss_condition: 1 missing"):
        pipe.reconstruct(image, [mask], pointmap=pointmap, quality="fast")


def test_the_demo_source_says_clearly_when_its_weights_are_not_bundled(monkeypatch, tmp_path):
    from engine.errors import WeightsError
    from engine.weights import sources

    monkeypatch.setattr(sources, "DEMO_FOLDER", tmp_path / "weights" / "demo")
    with pytest.raises(WeightsError, match="demo weights are not bundled"):
        Pipeline.from_source("demo", device="cpu")
