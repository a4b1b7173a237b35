"""engine/weights/release_source.py: a release folder -> (PipelineConfig, provider, identity) for the pipeline."""
from __future__ import annotations

from pathlib import Path

import torch

from engine import config as pipeline_configs
from engine.weights.release import DEFAULT_MODELS, open_release as open_folder
from engine.weights.release_source import open_release
from engine.weights.sources import open_source


def test_tiny_folder_gives_the_tiny_config_and_cached_official_tensors(parity_dir: Path, tmp_path: Path):
    tiny = parity_dir / "official_format_tiny"
    config, provide, identity = open_release(tiny, cache_dir=tmp_path)  # its not_in_yaml.json is found beside
    assert config == pipeline_configs.preset("tiny") and identity == str(tiny.resolve())
    weights = open_folder(tiny).load()
    for name in DEFAULT_MODELS:
        state = provide(name)
        assert state.keys() == weights[name].tensors.keys(), name
        for key, value in weights[name].tensors.items():
            assert torch.equal(state[key].to(value.dtype), value), f"{name}: {key}"  # fp16-representable values
    assert len(list(tmp_path.glob("*.safetensors"))) == len(DEFAULT_MODELS)


def test_without_cache_the_file_tensors_are_served_as_stored(parity_dir: Path, tmp_path: Path):
    tiny = parity_dir / "official_format_tiny"
    _, provide, _ = open_source(str(tiny), cache=False, cache_dir=tmp_path)
    state = provide("gs_decoder")
    assert state["offset_perturbation"].dtype == torch.float32
    assert state["blocks.0.attn.to_qkv.weight"].dtype == torch.float16
    assert list(tmp_path.iterdir()) == []
