"""The tiny MoGe goldens (../shared/parity/moge/moge_v1_tiny) and the tiny model loaded from them."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from engine.moge.model import PRESETS, MoGeModel
from tests.paths import PARITY

MOGE = PARITY / "moge"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    """Every tensor of moge_v1_tiny.safetensors: `param.*`, `input.*` and the upstream outputs."""
    return load_file(str(MOGE / "moge_v1_tiny.safetensors"))


@pytest.fixture(scope="module")
def tiny_state_dict(golden: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tiny model's weights, named as the public `model.pt` names them (`param.` stripped)."""
    return {k.removeprefix("param."): v for k, v in golden.items() if k.startswith("param.")}


@pytest.fixture(scope="module")
def tiny(tiny_state_dict: dict[str, torch.Tensor]) -> MoGeModel:
    model = MoGeModel(PRESETS["tiny"]).eval()
    model.load_state_dict(tiny_state_dict, strict=True)
    return model
