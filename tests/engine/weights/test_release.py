"""engine/weights/release.py: the official release folder -> settings, YAML sections, per-model state dicts."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import WeightsError
from engine.weights.checkpoint import read_checkpoint
from engine.weights.release import (ALL_MODELS, DEFAULT_MODELS, MODEL_SPECS, PIPELINE_CODE_DEFAULTS, open_release,
                                    split_generator)

MANIFEST_OF = {"ss_flow": "ss_generator", "ss_condition": "ss_generator", "slat_flow": "slat_generator",
               "slat_condition": "slat_generator", "ss_decoder": "ss_decoder", "gs_decoder": "slat_decoder_gs",
               "gs_decoder_4": "slat_decoder_gs_4", "mesh_decoder": "slat_decoder_mesh"}
_DEEP_BLOCK = re.compile(r"(^|\.)blocks\.([2-9]|[1-9]\d)\.")


@pytest.fixture(scope="module")
def tiny(parity_dir: Path) -> Path:
    return parity_dir / "official_format_tiny"


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "checkpoints"
    shutil.copytree(folder, out)
    for path in out.iterdir():
        path.chmod(0o644)
    return out


def test_tiny_release_splits_into_our_models_with_the_official_key_names(tiny: Path, parity_dir: Path):
    release = open_release(tiny, models=ALL_MODELS)
    weights = release.load()
    assert set(weights) == set(ALL_MODELS)
    for name, w in weights.items():
        manifest = json.loads((parity_dir / f"manifest_{MANIFEST_OF[name]}.json").read_text())["keys"]
        prefix = MODEL_SPECS[name].prefix
        official = {k for k in manifest if k.startswith(prefix)}
        if name != "ss_decoder":  # the tiny folder keeps blocks 0 and 1 of every depth-scaled stack
            official = {k for k in official if not _DEEP_BLOCK.search(k[len(prefix):])}
        assert {prefix + k for k in w.tensors} == official, name
        assert w.file == tiny / f"{MODEL_SPECS[name].file}.ckpt"
    # the SS-decoder copy inside ss_generator.ckpt belongs to no model
    assert len(weights["ss_flow"].skipped) == 74
    assert all(k.startswith("_base_models.ss_decoder.") for k in weights["ss_flow"].skipped)


def test_tensors_are_the_file_tensors_without_prefix(tiny: Path):
    weights = open_release(tiny, models=["ss_flow", "ss_condition"]).load()
    raw = read_checkpoint(tiny / "ss_generator.ckpt").state_dict
    for key, value in weights["ss_flow"].tensors.items():
        assert torch.equal(value, raw["_base_models.generator.reverse_fn.backbone." + key])
    for key, value in weights["ss_condition"].tensors.items():
        assert torch.equal(value, raw["_base_models.condition_embedder." + key])


def test_settings_come_from_pipeline_yaml_then_upstream_code_defaults(tiny: Path):
    settings = open_release(tiny).settings
    not_in_yaml = json.loads((tiny / "not_in_yaml.json").read_text())
    defaults = next(v for k, v in not_in_yaml.items() if k.startswith("pipeline_code_defaults"))
    assert {k: v for k, v in defaults.items() if k != "note"} == PIPELINE_CODE_DEFAULTS
    assert (settings.ss_inference_steps, settings.ss_rescale_t, settings.ss_cfg_strength) == (25, 3.0, 7.0)
    assert settings.ss_cfg_interval == (0.0, 500.0) and settings.slat_cfg_interval == (0.0, 500.0)
    assert (settings.slat_inference_steps, settings.slat_rescale_t, settings.slat_cfg_strength) == (25, 1.0, 1.0)
    assert settings.slat_mean[0] == pytest.approx(0.12211431) and settings.slat_std[-1] == pytest.approx(2.08374642)
    assert len(settings.slat_mean) == len(settings.slat_std) == 8
    assert settings.decode_formats == ("gaussian", "mesh") and settings.image_size == 56
    assert (settings.dtype, settings.downsample_ss_dist) == ("float16", 1)
    assert settings.pose_decoder_name == "ScaleShiftInvariant"


def test_given_code_defaults_replace_upstream_ones_only_where_yaml_is_silent(tiny: Path):
    settings = open_release(tiny, code_defaults={**PIPELINE_CODE_DEFAULTS, "ss_inference_steps": 12,
                                                 "slat_cfg_strength": 9}).settings
    assert settings.ss_inference_steps == 12 and settings.slat_cfg_strength == 1.0  # the YAML sets the latter


def test_yaml_sections_are_plain_data_and_targets_are_never_imported(tiny: Path):
    release = open_release(tiny, models=ALL_MODELS)
    flow = release.section("ss_flow")
    assert flow["_target_"].endswith("SparseStructureFlowTdfyWrapper") and flow["model_channels"] == 32
    assert flow["latent_mapping"]["shape"]["pos_embedder"]["resolution"] == 16
    assert release.section("ss_condition")["embedder_list"][2][0]["embed_dim"] == 16
    assert release.section("mesh_decoder")["representation_config"] == {"use_color": True}
    assert release.yamls["ss_generator"]["module"]["generator"]["backbone"]["rescale_t"] == 1
    assert not any(m.startswith(("sam3d_objects", "hydra", "omegaconf", "torchvision")) for m in sys.modules)


def test_default_models_leave_out_the_unused_gaussian_decoder(tiny: Path, tmp_path: Path):
    folder = _copy(tiny, tmp_path)
    (folder / "slat_decoder_gs_4.ckpt").unlink()
    (folder / "slat_decoder_gs_4.yaml").unlink()
    release = open_release(folder)
    assert release.models == DEFAULT_MODELS and "gs_decoder_4" not in DEFAULT_MODELS
    with pytest.raises(WeightsError, match="slat_decoder_gs_4.yaml is missing"):
        open_release(folder, models=ALL_MODELS)


def test_missing_model_file_names_the_file(tiny: Path, tmp_path: Path):
    folder = _copy(tiny, tmp_path)
    (folder / "slat_decoder_mesh.ckpt").unlink()
    with pytest.raises(WeightsError) as e:
        open_release(folder)
    assert "slat_decoder_mesh.ckpt is missing" in e.value.message and str(folder) in e.value.message
    open_release(folder, models=["ss_flow", "ss_decoder"])  # a subset that does not need it opens


def test_missing_folder_and_missing_pipeline_yaml_are_clear(tmp_path: Path):
    with pytest.raises(WeightsError, match="weights folder not found"):
        open_release(tmp_path / "nowhere")
    with pytest.raises(WeightsError, match="pipeline.yaml is missing"):
        open_release(tmp_path)


def test_pipeline_path_leaving_the_folder_is_refused(tiny: Path, tmp_path: Path):
    folder = _copy(tiny, tmp_path)
    text = (folder / "pipeline.yaml").read_text().replace("ss_decoder_ckpt_path: ss_decoder.ckpt",
                                                          "ss_decoder_ckpt_path: ../../etc/ss_decoder.ckpt")
    (folder / "pipeline.yaml").write_text(text)
    with pytest.raises(WeightsError, match="points outside the release folder"):
        open_release(folder)


def test_yaml_with_python_tags_is_not_valid(tiny: Path, tmp_path: Path):
    folder = _copy(tiny, tmp_path)
    (folder / "ss_decoder.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(WeightsError, match="ss_decoder.yaml: is not valid YAML"):
        open_release(folder)


def test_generator_key_outside_the_flow_backbone_is_an_error(tmp_path: Path):
    state = {"_base_models.generator.reverse_fn.backbone.w": torch.zeros(1),
             "_base_models.generator.extra.w": torch.zeros(1)}
    with pytest.raises(WeightsError, match="1 generator keys outside reverse_fn.backbone."):
        split_generator(state, tmp_path / "g.ckpt")


def test_raw_state_dict_where_a_generator_belongs_is_an_error(tiny: Path, tmp_path: Path):
    folder = _copy(tiny, tmp_path)
    torch.save({"w": torch.zeros(1)}, folder / "slat_generator.ckpt")
    with pytest.raises(WeightsError, match="raw state dict"):
        open_release(folder, models=["slat_flow"]).load()


def test_identical_dino_copies_are_reported_and_near_copies_are_not(tiny: Path, tmp_path: Path):
    folder = _copy(tiny, tmp_path)
    ss = read_checkpoint(tiny / "ss_generator.ckpt").state_dict
    slat = read_checkpoint(tiny / "slat_generator.ckpt").state_dict
    dino = "_base_models.condition_embedder.module_list.{}.backbone."
    ss_new = collections.OrderedDict((k, v.clone()) for k, v in ss.items())
    slat_new = collections.OrderedDict((k, v.clone()) for k, v in slat.items())
    for key, value in ss.items():
        if key.startswith(dino.format(0)):
            ss_new[key.replace(dino.format(0), dino.format(1))] = value.clone()
            slat_new[key.replace(dino.format(0), dino.format(0))] = value.clone()
            slat_new[key.replace(dino.format(0), dino.format(1))] = value.clone()
    # slat copy 1 differs in one element in the middle of one tensor (not at its ends)
    qkv = dino.format(1) + "blocks.1.attn.qkv.weight"
    slat_new[qkv].view(-1)[slat_new[qkv].numel() // 2] += 1.0
    torch.save({"state_dict": ss_new, "epoch": 0}, folder / "ss_generator.ckpt")
    torch.save({"state_dict": slat_new, "epoch": 0}, folder / "slat_generator.ckpt")

    release = open_release(folder)
    shared = release.find_shared_dinos(release.load(["ss_condition", "slat_condition"]))
    assert len(shared) == 1
    assert shared[0].members == ("ss_condition:module_list.0.backbone.", "ss_condition:module_list.1.backbone.",
                                 "slat_condition:module_list.0.backbone.")
    assert shared[0].num_tensors == 36 and shared[0].nbytes > 0


def test_official_tiny_dinos_all_differ(tiny: Path):
    release = open_release(tiny)
    assert release.find_shared_dinos(release.load(["ss_condition", "slat_condition"])) == []


def test_identity_changes_with_the_file(tiny: Path, tmp_path: Path):
    folder = _copy(tiny, tmp_path)
    before = open_release(folder).identity("ss_decoder")
    path = folder / "ss_decoder.ckpt"
    path.write_bytes(path.read_bytes())  # same bytes, new mtime
    os.utime(path, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    after = open_release(folder).identity("ss_decoder")
    assert before["model"] == "ss_decoder" and before != after
