"""Reading the parity cases of ../shared/parity (one .safetensors + .json sidecar per case)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.paths import PARITY


@dataclass
class ParityCase:
    params: dict[str, torch.Tensor]  # official state-dict names (prefix "param." stripped)
    inputs: dict[str, torch.Tensor]  # "input." stripped
    outputs: dict[str, torch.Tensor]  # "output." stripped
    meta: dict  # the JSON sidecar


def load_case(name: str, root: Path = PARITY) -> ParityCase:
    tensors = load_file(str(root / f"{name}.safetensors"))
    sidecar = root / f"{name}.json"
    meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}

    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return ParityCase(strip("param."), strip("input."), strip("output."), meta)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str = "") -> None:
    """Like torch.testing.assert_close, but NaN positions must agree and the message names the tensor."""
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")
