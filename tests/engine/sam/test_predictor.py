"""SamPredictor: coordinate transforms, where a prompt lands, mask choice, the embedding cache, bad input."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.sam.model import PRESETS, Sam
from engine.sam.predictor import SamPredictor, apply_boxes, apply_coords, preprocess_shape, select_tokens
from engine.sam.weights import random_sam


def picture(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> Sam:
    return random_sam("tiny", seed=0)


# -- coordinate transforms ----------------------------------------------------------------------------------------


def test_resize_keeps_the_aspect_with_the_longest_side_at_the_input_size():
    assert preprocess_shape(480, 640, 1024) == (768, 1024)
    assert preprocess_shape(640, 480, 1024) == (1024, 768)
    assert preprocess_shape(300, 500, 1024) == (614, 1024)  # 614.4 rounds down
    assert preprocess_shape(333, 1000, 1024) == (341, 1024)  # 340.992 rounds up
    assert preprocess_shape(1024, 1024, 1024) == (1024, 1024)


def test_coordinates_scale_per_axis_with_the_rounded_resized_size():
    coords = np.array([[320.0, 240.0], [0.0, 0.0], [640.0, 480.0]])
    assert np.allclose(apply_coords(coords, (480, 640), 1024), [[512, 384], [0, 0], [1024, 768]])
    # 300 x 500 -> 614 x 1024: x by 1024/500, y by 614/300 (not 1024/500: the rounding is kept per axis)
    assert np.allclose(apply_coords(np.array([[250.0, 150.0]]), (300, 500), 1024), [[512.0, 307.0]])
    assert np.allclose(apply_boxes(np.array([[50.0, 30.0, 450.0, 270.0]]), (300, 500), 1024),
                       [[102.4, 61.4, 921.6, 552.6]])
    assert apply_coords(coords, (480, 640), 1024) is not coords and coords[0, 0] == 320.0  # input untouched


class StubDecoder:
    """Stands in for Sam.embed/decode at full size (S = 1024, 256² logits): paints +1 logits in a disc around the
    click (or inside the box) as the model saw it, -1 elsewhere; records what it was given."""

    def __init__(self, model: Sam, radius: float = 40.0):
        self.model, self.radius, self.seen = model, radius, {}
        model.embed = self.embed
        model.decode = self.decode

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.seen["image"] = tuple(images.shape)
        g = self.model.cfg.embedding_size
        return torch.zeros(1, self.model.cfg.prompt_embed_dim, g, g)

    def decode(self, embedding, coords, labels, boxes, mask_input):
        m, s = self.model.cfg.low_res_size, self.model.cfg.img_size
        centres = (torch.arange(m, dtype=torch.float32) + 0.5) * s / m  # low-res pixel centres in input px
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        if boxes is not None:
            x1, y1, x2, y2 = boxes[0]
            inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
        else:
            cx, cy = coords[0, 0]
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= self.radius**2
        logits = torch.where(inside, 1.0, -1.0).expand(1, 4, m, m)
        return logits, torch.tensor([[0.5, 0.9, 0.1, 0.2]])


@pytest.mark.parametrize("size,click", [((300, 500), (123.0, 257.0)), ((500, 300), (280.0, 37.0)),
                                        ((480, 640), (639.0, 479.0)), ((333, 1000), (0.0, 170.0))])
def test_a_click_at_a_known_pixel_gives_a_mask_centred_on_that_pixel(size, click):
    model = Sam(replace(PRESETS["tiny"], img_size=1024, patch_size=16, window_size=14))
    stub = StubDecoder(model)
    predictor = SamPredictor(model)
    predictor.set_image(picture(*size, seed=1))
    resized = preprocess_shape(*size, 1024)
    assert stub.seen["image"] == (1, 3, *resized)
    result = predictor.predict([click], [1])
    assert result.masks.shape == (1, *size)
    mask = result.masks[0]
    assert mask[int(click[1]), int(click[0])]
    # the stub's disc, mapped back analytically: centre = the click, radius scaled by W / w
    radius = stub.radius * size[1] / resized[1]
    rows, cols = np.mgrid[: size[0], : size[1]] + 0.5
    disc = (cols - click[0]) ** 2 + (rows - click[1]) ** 2 <= radius**2
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.9, f"IoU {iou:.3f} with the disc around {click}"
    inner = (cols - click[0]) ** 2 + (rows - click[1]) ** 2 <= (radius - 2) ** 2
    assert mask[inner].all()


def test_a_box_gives_the_mask_of_the_box_on_the_original_picture():
    model = Sam(replace(PRESETS["tiny"], img_size=1024, patch_size=16, window_size=14))
    StubDecoder(model)
    predictor = SamPredictor(model)
    predictor.set_image(picture(300, 500, seed=2))
    mask = predictor.predict(box=(410, 200, 60, 40)).masks[0]  # corners given in any order
    expected = np.zeros((300, 500), dtype=bool)
    expected[40:200, 60:410] = True
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou > 0.97


# -- masks and scores from the tiny random model ------------------------------------------------------------------


def test_tiny_model_predicts_three_masks_or_one_on_cpu(tiny):
    predictor = SamPredictor(tiny)
    predictor.set_image(picture(90, 130, seed=3))
    multi = predictor.predict([[40, 50], [100, 20]], [1, 0], multimask=True, allow_empty=True)
    assert multi.masks.shape == (3, 90, 130) and multi.masks.dtype == bool
    assert multi.scores.shape == (3,) and multi.low_res_logits.shape == (3, 32, 32) and multi.mask_tokens == (1, 2, 3)
    single = predictor.predict([[40, 50], [100, 20]], [1, 0], allow_empty=True)
    assert single.masks.shape == (1, 90, 130) and single.mask_tokens == (0,)  # several clicks: the single answer


def test_single_click_returns_the_best_scoring_of_the_three_masks(tiny):
    predictor = SamPredictor(tiny)
    predictor.set_image(picture(90, 130, seed=4))
    for click in ([10, 10], [120, 80], [64, 45]):
        multi = predictor.predict([click], [1], multimask=True, allow_empty=True)
        single = predictor.predict([click], [1], allow_empty=True)
        best = int(np.argmax(multi.scores))
        assert single.mask_tokens == (best + 1,)
        assert np.array_equal(single.masks[0], multi.masks[best]) and single.scores[0] == multi.scores[best]


def test_mask_choice_follows_the_web_demo_rule():
    iou = np.array([0.3, 0.2, 0.9, 0.5])
    assert select_tokens(iou, multimask=True, num_prompt_tokens=2) == (1, 2, 3)
    assert select_tokens(iou, multimask=False, num_prompt_tokens=2) == (2,)  # one click + padding, or a box
    assert select_tokens(iou, multimask=False, num_prompt_tokens=3) == (0,)  # two clicks + padding, click + box


def test_low_res_logits_can_be_fed_back_to_refine(tiny):
    predictor = SamPredictor(tiny)
    predictor.set_image(picture(90, 130, seed=5))
    first = predictor.predict([[40, 50]], [1], allow_empty=True)
    again = predictor.predict([[40, 50], [90, 30]], [1, 1], mask_input=first.low_res_logits[0], allow_empty=True)
    plain = predictor.predict([[40, 50], [90, 30]], [1, 1], allow_empty=True)
    assert np.abs(again.low_res_logits - plain.low_res_logits).max() > 1e-3
    with pytest.raises(InputError, match="mask_input has shape"):
        predictor.predict([[40, 50]], [1], mask_input=np.zeros((16, 16)))


# -- the embedding cache ------------------------------------------------------------------------------------------


def test_embedding_is_reused_for_the_same_picture_and_recomputed_for_another(tiny):
    a, b = picture(90, 130, seed=6), picture(90, 130, seed=7)
    predictor = SamPredictor(tiny, cache_size=2)
    key_a = predictor.set_image(a)
    first = predictor.predict([[60, 40]], [1], multimask=True, allow_empty=True)
    assert predictor.set_image(a.copy()) == key_a and predictor.encoder_runs == 1  # same content, same key
    second = predictor.predict([[60, 40]], [1], multimask=True, allow_empty=True)
    assert predictor.encoder_runs == 1 and np.array_equal(first.low_res_logits, second.low_res_logits)

    assert predictor.set_image(b) != key_a and predictor.encoder_runs == 2
    other = predictor.predict([[60, 40]], [1], multimask=True, allow_empty=True)
    assert np.abs(other.low_res_logits - first.low_res_logits).max() > 1e-4  # B's embedding, not A's
    fresh = SamPredictor(tiny)
    fresh.set_image(b)
    assert np.allclose(fresh.predict([[60, 40]], [1], multimask=True, allow_empty=True).low_res_logits,
                       other.low_res_logits, atol=1e-5)

    predictor.set_image(a)  # still cached (2 entries)
    assert predictor.encoder_runs == 2
    small = SamPredictor(tiny, cache_size=1)
    for image in (a, b, a):
        small.set_image(image)
    assert small.encoder_runs == 3  # one entry: going back to A recomputes


# -- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("points,labels,box,message", [
    ([[131, 10]], [1], None, r"point 0 at \(131, 10\) lies outside the 130x90 image"),
    ([[10, 10], [5, -1]], [1, 0], None, "point 1 at .* lies outside"),
    ([[np.nan, 3]], [1], None, "not a finite pixel position"),
    ([[10, 10]], [2], None, "labels must be 1 \\(add\\) or 0 \\(remove\\)"),
    ([[10, 10]], None, None, "no labels"),
    ([[10, 10], [20, 20]], [1], None, "2 point\\(s\\) but 1 label"),
    (None, None, (10, 10, 140, 50), "box .* reaches outside the 130x90 image"),
    (None, None, (10, 10, 10, 50), "has no area"),
    (None, None, None, "no prompt"),
    (np.zeros((0, 2)), [], None, "no prompt"),
])
def test_bad_prompts_are_refused_with_a_clear_message(tiny, points, labels, box, message):
    predictor = SamPredictor(tiny)
    predictor.set_image(picture(90, 130, seed=8))
    with pytest.raises(InputError, match=message):
        predictor.predict(points, labels, box)


def test_an_empty_mask_is_reported_unless_allowed():
    model = random_sam("tiny", seed=9)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:  # every mask logit becomes exactly 0
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.zero_()
    predictor = SamPredictor(model)
    predictor.set_image(picture(60, 80, seed=10))
    with pytest.raises(InputError, match="the mask is empty"):
        predictor.predict([[30, 30]], [1])
    assert not predictor.predict([[30, 30]], [1], allow_empty=True).masks.any()


def test_pictures_without_pixels_or_prompts_without_a_picture_are_refused_and_change_nothing(tiny):
    predictor = SamPredictor(tiny)
    with pytest.raises(InputError, match="set the image"):
        predictor.predict([[1, 1]], [1])
    key = predictor.set_image(picture(60, 80, seed=11))
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((40, 0, 3), np.uint8), np.zeros((5, 5, 2), np.uint8),
                np.array([[object()]])):
        with pytest.raises(InputError):
            predictor.set_image(bad)
    assert predictor.image_key == key and predictor.image_size == (60, 80) and predictor.encoder_runs == 1
