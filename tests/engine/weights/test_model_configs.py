"""engine/weights/model_configs.py: release YAML sections (+ values from outside the YAMLs) -> our model configs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from engine import config as pipeline_configs
from engine.errors import WeightsError
from engine.models import condition, gs_decoder, mesh_decoder, slat_flow, ss_decoder, ss_flow
from engine.weights.keys import check_state_dict, expected_shapes
from engine.weights.model_configs import DinoDims, OutsideYaml, model_config, pipeline_config
from engine.weights.release import ALL_MODELS, MODEL_SPECS, open_release

MODULES = {
    "ss_flow": (ss_flow.SSFlow, "tiny"), "ss_condition": (condition.ConditionEmbedder, "tiny"),
    "slat_flow": (slat_flow.SlatFlowModel, "tiny"), "slat_condition": (condition.ConditionEmbedder, "tiny_slat"),
    "ss_decoder": (ss_decoder.SSDecoder, "tiny"), "gs_decoder": (gs_decoder.GaussianDecoder, "tiny"),
    "gs_decoder_4": (gs_decoder.GaussianDecoder, "tiny_4"), "mesh_decoder": (mesh_decoder.MeshDecoder, "tiny"),
}
PRESETS = {"ss_flow": ss_flow.PRESETS, "ss_condition": condition.PRESETS, "slat_flow": slat_flow.PRESETS,
           "slat_condition": condition.PRESETS, "ss_decoder": ss_decoder.PRESETS, "gs_decoder": gs_decoder.PRESETS,
           "gs_decoder_4": gs_decoder.PRESETS, "mesh_decoder": mesh_decoder.PRESETS}
MANIFEST_OF = {"ss_flow": "ss_generator", "ss_condition": "ss_generator", "slat_flow": "slat_generator",
               "slat_condition": "slat_generator", "ss_decoder": "ss_decoder", "gs_decoder": "slat_decoder_gs",
               "gs_decoder_4": "slat_decoder_gs_4", "mesh_decoder": "slat_decoder_mesh"}


@pytest.fixture(scope="module")
def tiny(parity_dir: Path) -> Path:
    return parity_dir / "official_format_tiny"


@pytest.fixture(scope="module")
def tiny_outside(tiny: Path) -> OutsideYaml:
    return OutsideYaml.from_json(tiny / "not_in_yaml.json")


def _copy(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out)
    for path in out.iterdir():
        path.chmod(0o644)
    return out


def _official_yamls(tiny: Path, out: Path) -> Path:
    """The tiny folder with every dimension its README lists put back to the official value."""
    folder = _copy(tiny, out)

    def edit(name: str, change) -> None:
        data = yaml.safe_load((folder / name).read_text())
        change(data)
        (folder / name).write_text(yaml.safe_dump(data, sort_keys=False))

    def widths(node, old: int, new: int, keys=("model_channels", "cond_channels")) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in keys and v == old:
                    node[k] = new
                else:
                    widths(v, old, new, keys)
        elif isinstance(node, list):
            for v in node:
                widths(v, old, new, keys)

    def generator(data, ppe: bool) -> None:
        for entry in data["module"]["condition_embedder"]["backbone"]["embedder_list"]:
            if entry[0]["_target_"].endswith(".Dino"):
                entry[0]["input_size"] = 518
            else:
                entry[0].update(embed_dim=512, input_size=256, patch_size=8)
        flow = data["module"]["generator"]["backbone"]["reverse_fn"]["backbone"]
        widths(flow, 32, 1024)
        flow.update(num_blocks=24, num_heads=16)
        if not ppe:
            flow["io_block_channels"] = [128]

    def resize(node) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).endswith(".Resize"):
                node["size"] = 518
            for v in node.values():
                resize(v)
        elif isinstance(node, list):
            for v in node:
                resize(v)

    edit("pipeline.yaml", resize)
    edit("ss_generator.yaml", lambda d: generator(d, ppe=True))
    edit("slat_generator.yaml", lambda d: generator(d, ppe=False))
    edit("ss_decoder.yaml", lambda d: d.update(channels=[512, 128, 32]))
    for name in ("slat_decoder_gs.yaml", "slat_decoder_gs_4.yaml", "slat_decoder_mesh.yaml"):
        edit(name, lambda d: d.update(model_channels=768, num_blocks=12, num_heads=12))
    return folder


def _module(model: str, cfg):
    with torch.device("meta"):
        return MODULES[model][0](cfg)


def test_tiny_yamls_and_not_in_yaml_give_the_tiny_presets(tiny: Path, tiny_outside: OutsideYaml):
    release = open_release(tiny, models=ALL_MODELS)
    for model in ALL_MODELS:
        assert model_config(release, model, tiny_outside) == PRESETS[model][MODULES[model][1]], model
    assert pipeline_config(open_release(tiny), tiny_outside) == pipeline_configs.preset("tiny")


def test_tiny_weights_load_strictly_into_models_built_from_the_yamls(tiny: Path, tiny_outside: OutsideYaml):
    release = open_release(tiny, models=ALL_MODELS)
    for model, weights in release.load().items():
        module = _module(model, model_config(release, model, tiny_outside))
        check_state_dict(weights.tensors, expected_shapes(module), file=weights.file, model=model)
        module.load_state_dict(weights.tensors, strict=True, assign=True)


def test_official_yamls_give_the_official_presets_and_the_manifest_keys(tiny: Path, tmp_path: Path, parity_dir: Path):
    release = open_release(_official_yamls(tiny, tmp_path / "official"), models=ALL_MODELS)
    assert pipeline_config(open_release(release.files["pipeline.yaml"].parent)) == pipeline_configs.preset("official")
    official = {"ss_flow": "official", "ss_condition": "official", "slat_flow": "official",
                "slat_condition": "official_slat", "ss_decoder": "official", "gs_decoder": "official",
                "gs_decoder_4": "official_4", "mesh_decoder": "official"}
    for model in ALL_MODELS:
        cfg = model_config(release, model)  # real-release defaults for DINO and GroupNorm
        assert cfg == PRESETS[model][official[model]], model
        manifest = json.loads((parity_dir / f"manifest_{MANIFEST_OF[model]}.json").read_text())["keys"]
        prefix = MODEL_SPECS[model].prefix
        expected = {k[len(prefix):]: tuple(v["shape"]) for k, v in manifest.items() if k.startswith(prefix)}
        assert expected_shapes(_module(model, cfg)) == expected, model


def test_tiny_folder_with_wrong_outside_values_fails_clearly(tiny: Path):
    release = open_release(tiny, models=["ss_condition"])
    with pytest.raises(WeightsError) as e:  # real-release DINO (518 px) against the YAML's 56 px input
        model_config(release, "ss_condition")
    assert str(tiny / "ss_generator.yaml") in e.value.message and "input_size 56" in e.value.message
    wrong_width = OutsideYaml(dino=DinoDims(img_size=56, embed_dim=64, depth=2, num_heads=2), mesh_groupnorm_groups=4)
    weights = release.load()["ss_condition"]
    module = _module("ss_condition", model_config(release, "ss_condition", wrong_width))
    with pytest.raises(WeightsError) as e:
        check_state_dict(weights.tensors, expected_shapes(module), file=weights.file, model="ss_condition")
    assert str(tiny / "ss_generator.ckpt") in e.value.message and "expects" in e.value.message


def test_yaml_value_this_engine_does_not_implement_is_an_error(tiny: Path, tmp_path: Path, tiny_outside):
    folder = _copy(tiny, tmp_path / "rope")
    (folder / "slat_generator.yaml").write_text(
        (folder / "slat_generator.yaml").read_text().replace("pe_mode: ape", "pe_mode: rope"))
    (folder / "slat_decoder_gs.yaml").write_text(
        (folder / "slat_decoder_gs.yaml").read_text().replace("attn_mode: swin", "attn_mode: full"))
    release = open_release(folder, models=ALL_MODELS)
    with pytest.raises(WeightsError) as e:
        model_config(release, "slat_flow", tiny_outside)
    assert str(folder / "slat_generator.yaml") in e.value.message
    assert "module.generator.backbone.reverse_fn.backbone.pe_mode" not in e.value.message  # path inside the section
    assert "pe_mode is 'rope'; this engine implements 'ape' only" in e.value.message
    with pytest.raises(WeightsError, match="attn_mode is 'full'"):
        model_config(release, "gs_decoder", tiny_outside)
    model_config(release, "gs_decoder_4", tiny_outside)  # the other decoder is untouched


def test_missing_yaml_value_is_named(tiny: Path, tmp_path: Path, tiny_outside):
    folder = _copy(tiny, tmp_path / "cut")
    (folder / "ss_decoder.yaml").write_text(
        "\n".join(l for l in (folder / "ss_decoder.yaml").read_text().splitlines() if "num_res_blocks_middle" not in l))
    with pytest.raises(WeightsError, match="ss_decoder.yaml: lacks num_res_blocks_middle"):
        model_config(open_release(folder, models=["ss_decoder"]), "ss_decoder", tiny_outside)


def test_not_in_yaml_json_reads_either_column(tiny: Path, tmp_path: Path):
    assert OutsideYaml.from_json(tiny / "not_in_yaml.json") == OutsideYaml(DinoDims(56, 32, 2, 2), 4)
    real = OutsideYaml.from_json(tiny / "not_in_yaml.json", "real_release")
    assert real == OutsideYaml(DinoDims(518, 1024, 24, 16), 32)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(WeightsError, match="bad.json: is not a readable not_in_yaml.json"):
        OutsideYaml.from_json(tmp_path / "bad.json")
