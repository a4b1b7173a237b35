"""Loading SAM checkpoints: round trip of a torch.save file, strict key checks, size detection, file specs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.sam.weights as sam_weights
from engine.errors import WeightsError
from engine.sam.model import PRESETS, Sam
from engine.sam.predictor import SamPredictor
from engine.sam.weights import infer_variant, load_sam, parse_hub_spec, random_sam, resolve_sam_file
from tests.engine.manifests import build_on_meta


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A tiny random SAM saved as upstream saves its checkpoints: torch.save of the plain state dict."""
    path = tmp_path_factory.mktemp("sam") / "sam_tiny_test.pth"
    torch.save(random_sam("tiny", seed=0).state_dict(), path)
    return path


def test_a_saved_state_dict_loads_back_exactly_and_predicts_the_same(tiny_file):
    model = load_sam(tiny_file, variant="tiny")
    reference = random_sam("tiny", seed=0)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    results = []
    for m in (model, reference):
        predictor = SamPredictor(m)
        predictor.set_image(image)
        results.append(predictor.predict([[20, 30]], [1], multimask=True, allow_empty=True).low_res_logits)
    assert np.array_equal(*results)


def test_weights_can_be_cast_on_load(tiny_file):
    model = load_sam(tiny_file, variant="tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in model.state_dict().values()} == {torch.bfloat16}


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("mask_decoder.iou_token.weight"), r"1 missing \(mask_decoder.iou_token.weight\)"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), r"1 unexpected \(extra.weight\)"),
    (lambda sd: sd.__setitem__("image_encoder.blocks.0.attn.rel_pos_h", torch.zeros(7, 16)),
     r"image_encoder.blocks.0.attn.rel_pos_h has shape \(7, 16\) in the file but the model expects \(5, 16\)"),
])
def test_a_checkpoint_that_does_not_match_is_refused_in_one_line_naming_the_file(tmp_path, edit, message):
    state = random_sam("tiny").state_dict()
    edit(state)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=message) as error:
        load_sam(path, variant="tiny")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_the_size_is_read_from_the_image_encoder_width(variant):
    state = build_on_meta(lambda: Sam(PRESETS[variant])).state_dict()
    assert infer_variant(state, "x.pth") == variant


def test_a_file_of_another_size_or_kind_is_refused(tiny_file, tmp_path):
    with pytest.raises(WeightsError, match="is not one of the public SAM sizes"):
        load_sam(tiny_file)  # a width-32 encoder is no public size unless "tiny" is asked for
    vit_b_like = tmp_path / "sam_vit_b_fake.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 1, 1)}, vit_b_like)
    with pytest.raises(WeightsError, match="holds a vit_b model, not vit_h"):
        load_sam(vit_b_like, variant="vit_h")
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match=f"{other} is not a SAM checkpoint"):
        load_sam(other)
    with pytest.raises(WeightsError, match="unknown SAM size 'vit_x'"):
        load_sam(other, variant="vit_x")


def test_missing_files_and_folders_are_named(tmp_path):
    with pytest.raises(WeightsError, match=f"SAM checkpoint {tmp_path / 'nope.pth'} not found"):
        load_sam(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="holds no sam_vit_\\*.pth files"):
        resolve_sam_file(tmp_path)
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"")
    (tmp_path / "sam_vit_l_0b3195.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="holds 2"):
        resolve_sam_file(tmp_path)
    assert resolve_sam_file(tmp_path, variant="vit_l") == tmp_path / "sam_vit_l_0b3195.pth"


def test_hub_specs_name_repo_revision_and_file():
    assert parse_hub_spec("hf:someone/sam-weights/checkpoints/sam_vit_b_01ec64.pth") == (
        "someone/sam-weights", None, "checkpoints/sam_vit_b_01ec64.pth")
    assert parse_hub_spec("hf:someone/sam-weights@v1.0/sam_vit_h_4b8939.pth") == (
        "someone/sam-weights", "v1.0", "sam_vit_h_4b8939.pth")
    for bad in ("hf:someone", "hf:someone/repo", "hf:someone/repo/"):
        with pytest.raises(WeightsError, match="not a hub file spec"):
            parse_hub_spec(bad)


def test_a_hub_spec_is_fetched_through_the_resumable_downloader_with_progress(tiny_file, monkeypatch):
    calls = []

    def fake_download(repo, filename, *, revision, offline, progress, download_dir):
        calls.append((repo, filename, revision, offline))
        progress(filename, 10, 20)
        return tiny_file

    monkeypatch.setattr(sam_weights, "download_file", fake_download)
    seen = []
    model = load_sam("hf:someone/sam@abc/sam_tiny.pth", variant="tiny", progress=lambda *a: seen.append(a),
                     offline=True)
    assert calls == [("someone/sam", "sam_tiny.pth", "abc", True)] and seen == [("sam_tiny.pth", 10, 20)]
    assert isinstance(model, Sam)
