"""engine/weights/keys.py: strict key and shape accounting, one-line errors naming the file."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.errors import WeightsError
from engine.weights.keys import check_state_dict, expected_shapes
from engine.weights.release import open_release


@pytest.fixture(scope="module")
def decoder(parity_dir: Path):
    release = open_release(parity_dir / "official_format_tiny", models=["ss_decoder"])
    return release.load()["ss_decoder"]


def test_exact_keys_and_shapes_pass(decoder):
    expected = {k: tuple(v.shape) for k, v in decoder.tensors.items()}
    check_state_dict(decoder.tensors, expected, file=decoder.file, model="ss_decoder")
    check_state_dict(decoder.tensors, list(expected), file=decoder.file, model="ss_decoder")  # names only


def test_missing_key_is_one_line_naming_file_counts_and_keys(decoder):
    expected = {k: tuple(v.shape) for k, v in decoder.tensors.items()}
    tensors = dict(decoder.tensors)
    del tensors["out_layer.2.bias"]
    with pytest.raises(WeightsError) as e:
        check_state_dict(tensors, expected, file=decoder.file, model="ss_decoder")
    message = str(e.value)
    assert "\n" not in message and str(decoder.file) in message
    assert "1 missing (out_layer.2.bias)" in message and f"of {len(expected)} expected keys" in message


def test_unexpected_keys_are_counted_and_the_first_few_named(decoder):
    expected = list(decoder.tensors)[5:]
    with pytest.raises(WeightsError) as e:
        check_state_dict(decoder.tensors, expected, file=decoder.file, model="ss_decoder")
    first = list(decoder.tensors)[:3]
    assert f"5 unexpected ({', '.join(first)}, …)" in e.value.message and "missing" not in e.value.message


def test_shape_mismatch_is_one_line_naming_file_key_and_both_shapes(decoder):
    expected = {k: tuple(v.shape) for k, v in decoder.tensors.items()}
    expected["input_layer.weight"] = (512, 8, 3, 3, 3)
    expected["out_layer.2.weight"] = (1, 2)
    with pytest.raises(WeightsError) as e:
        check_state_dict(decoder.tensors, expected, file=decoder.file, model="ss_decoder")
    got = tuple(decoder.tensors["input_layer.weight"].shape)
    assert str(e.value).count("\n") == 0 and str(decoder.file) in e.value.message
    assert f"input_layer.weight has shape {got} in the file but the model expects (512, 8, 3, 3, 3) (+1 more)" \
        in e.value.message


def test_expected_shapes_of_a_meta_module():
    with torch.device("meta"):
        module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    assert expected_shapes(module) == {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (4,), "1.bias": (4,)}


def test_integer_tensors_are_refused_where_only_floats_belong():
    tensors = {"w": torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), "step": torch.tensor([3])}
    check_state_dict(tensors, {"w": (2, 3), "step": (1,)}, file="model.pt", model="MoGe")  # allowed by default
    with pytest.raises(WeightsError, match=r"model.pt: MoGe has non-float tensors \(step\)"):
        check_state_dict(tensors, {"w": (2, 3), "step": (1,)}, file="model.pt", model="MoGe", floats_only=True)
