"""The parity's tiny MoGe written as a public-style `model.pt`, for tests that need a depth estimator."""
from __future__ import annotations

import json

import torch

from tests.engine.parity import load_case
from tests.paths import PARITY


def write_tiny_moge(path) -> None:
    """{"model": state dict, "model_config": ...}: the container of the public MoGe checkpoint."""
    case = load_case("moge/moge_v1_tiny")
    config = json.loads((PARITY / "moge" / "moge_v1_tiny.meta.json").read_text())["tiny_config"]
    torch.save({"model": case.params, "model_config": config}, path)
