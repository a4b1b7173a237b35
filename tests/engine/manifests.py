"""Checking our modules against the official checkpoint format, without the real files.

* `manifest_*.json` (in ../shared/parity, MoGe's in its `moge/` folder) list every key of an official checkpoint with
  its shape and kind: `assert_matches_manifest` compares an `official` module built on `meta` with them.
* `official_format_tiny/*.ckpt` are small checkpoints in the official layout: `tiny_checkpoint` reads their
  tensors with the engine's own safe reader (no pickled code runs; the Lightning files hold OmegaConf objects).
"""
from __future__ import annotations

import json
from typing import Callable, TypeVar

import torch
from torch import nn

from engine.weights.checkpoint import read_checkpoint
from tests.paths import PARITY

M = TypeVar("M", bound=nn.Module)


def build_on_meta(build: Callable[[], M]) -> M:
    """`build()` under `torch.device("meta")`: no memory, and it fails if construction does data-dependent work."""
    with torch.device("meta"):
        return build()


def manifest_entries(manifest: str, prefix: str = "") -> dict[str, dict]:
    """The entries of PARITY/`manifest` whose key starts with `prefix`, prefix stripped: key -> {shape, dtype, kind}."""
    data = json.loads((PARITY / manifest).read_text())
    keys = data["keys"] if "keys" in data else data["state_dict_keys"]  # MoGe's manifest names them differently
    return {k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix)}


def assert_matches_manifest(module: nn.Module, manifest: str, prefix: str = "") -> None:
    """`module.state_dict()` has exactly the keys (under `prefix`) and shapes of the manifest, and its buffers are
    exactly the entries the manifest calls buffers (so no buffer of ours is missing from, or extra to, the file)."""
    expected = manifest_entries(manifest, prefix)
    assert expected, f"{manifest} has no keys under {prefix!r}"
    state = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    assert not missing and not unexpected, f"{manifest}: missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = [f"{k} {list(v.shape)} != {expected[k]['shape']}" for k, v in state.items()
             if list(v.shape) != expected[k]["shape"]]  # fmt: skip
    assert not wrong, f"{manifest}: {len(wrong)} shapes differ, e.g. {wrong[:3]}"
    buffers = {name for name, _ in module.named_buffers()}
    assert buffers == {k for k, v in expected.items() if v["kind"] == "buffer"}, f"{manifest}: buffers {buffers}"


def tiny_checkpoint(name: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of official_format_tiny/`name` under `prefix` (stripped), as a state dict to load strictly."""
    state = read_checkpoint(PARITY / "official_format_tiny" / name).state_dict
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
