"""Loading a MoGe v1 `model.pt` (written here in the public file's layout) strictly and safely."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.errors import WeightsError
from engine.moge.model import PRESETS
from engine.moge.weights import config_from_checkpoint, load_moge
from tests.paths import PARITY

MOGE = PARITY / "moge"
_G = torch.Generator().manual_seed(21)


@pytest.fixture(scope="module")
def tiny_blob(tiny_state_dict) -> dict:
    """The tiny model as the public file stores it: {'model': state dict, 'model_config': first-release kwargs}."""
    meta = json.loads((MOGE / "moge_v1_tiny.meta.json").read_text())
    return {"model": tiny_state_dict, "model_config": meta["tiny_config"]}


def _save(blob, path: Path) -> Path:
    torch.save(blob, path)
    return path


def test_public_model_config_gives_the_official_preset():
    manifest = json.loads((MOGE / "manifest_moge_vitl.json").read_text())
    cfg = config_from_checkpoint(manifest["model_config_public_checkpoint"])
    assert cfg == PRESETS["official"]
    assert cfg.num_tokens_range == tuple(manifest["effective_config_current_code"]["num_tokens_range"])


def test_loads_the_tiny_checkpoint_and_reproduces_upstreams_forward(tiny_blob, golden, tmp_path):
    model = load_moge(_save(tiny_blob, tmp_path / "model.pt"))
    assert model.cfg == PRESETS["tiny"]
    assert not model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        points, mask = model(golden["input.image"][None], 30)
    scale = golden["forward.points"].abs().max()
    assert (points - golden["forward.points"]).abs().max() <= 2e-5 * scale


def test_weights_can_be_cast_on_load(tiny_blob, tmp_path):
    model = load_moge(_save(tiny_blob, tmp_path / "model.pt"), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda sd: sd.pop("head.projects.1.bias"), "1 missing (head.projects.1.bias)"),
        (lambda sd: sd.__setitem__("head.extra.weight", torch.randn(1, generator=_G)), "1 unexpected (head.extra.weight)"),
        (lambda sd: sd.__setitem__("backbone.norm.weight", torch.randn(65, generator=_G)), "backbone.norm.weight has shape (65,) in the file but the model expects (64,)"),
    ],
)
def test_a_state_dict_that_does_not_match_is_refused_naming_the_file(tiny_blob, tmp_path, edit, needle):
    state_dict = dict(tiny_blob["model"])
    edit(state_dict)
    path = _save({"model": state_dict, "model_config": tiny_blob["model_config"]}, tmp_path / "broken.pt")
    with pytest.raises(WeightsError) as err:
        load_moge(path)
    assert needle in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


class _Payload:
    """Stands for arbitrary code in a pickle: the restricted loader must not construct it."""


@pytest.mark.parametrize(
    "blob,needle",
    [
        ({"model": {}, "config": {}}, "expected keys 'model' and 'model_config'"),
        ({"model": {"x": _Payload()}, "model_config": {}}, "are not tensors"),  # kept inert, never constructed
        ({"model": {}, "model_config": {"encoder": "dinov2_vitg14", "remap_output": "exp"}}, "not supported"),
        ({"model": {}, "model_config": {"encoder": "dinov2_vitl14", "remap_output": "linear"}}, "remap_output"),
    ],
)
def test_unusable_checkpoints_are_refused_naming_the_file(tmp_path, blob, needle):
    path = _save(blob, tmp_path / "model.pt")
    with pytest.raises(WeightsError) as err:
        load_moge(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_a_missing_or_truncated_file_is_refused(tiny_blob, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_moge(tmp_path / "absent.pt")
    path = _save(tiny_blob, tmp_path / "model.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_moge(truncated)



def test_the_checkpoint_is_converted_once_to_a_memory_mapped_cache(tiny_blob, tmp_path):
    path = _save(tiny_blob, tmp_path / "model.pt")
    first = load_moge(path, cache_dir=tmp_path / "cache", dtype=torch.bfloat16)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    second = load_moge(path, cache_dir=tmp_path / "cache", dtype=torch.bfloat16)
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), k
