"""Strict key accounting: the tensors of a file against what a model expects (names, and shapes where known).

Loading is strict (zero missing, zero unexpected, every shape equal). A mismatch is one `WeightsError` line that
names the file, the model, the counts and the first few keys, so a wrong or damaged file is obvious at once.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from ..errors import WeightsError

_SHOWN = 3  # keys named per category in a message


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a module's state dict (works for modules built on the `meta` device)."""
    return {name: tuple(value.shape) for name, value in module.state_dict().items()}


def check_state_dict(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, Sequence[int] | None] | Iterable[str],
    *,
    file: str | Path,
    model: str,
    floats_only: bool = False,
) -> None:
    """Raise `WeightsError` unless `tensors` has exactly the `expected` keys (and shapes, where given as a mapping
    of name -> shape; a `None` shape is not checked); with `floats_only`, every tensor must be floating point."""
    shapes = dict(expected) if isinstance(expected, Mapping) else dict.fromkeys(expected)
    missing = [k for k in shapes if k not in tensors]
    unexpected = [k for k in tensors if k not in shapes]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
        raise WeightsError(
            f"{file}: the weights do not fit {model}: {', '.join(parts)} of {len(shapes)} expected keys",
            "the file belongs to another model or release, or is damaged; point to the official release folder",
        )
    wrong = [(k, tuple(tensors[k].shape), tuple(s)) for k, s in shapes.items()
             if s is not None and tuple(tensors[k].shape) != tuple(s)]
    if wrong:
        key, got, want = wrong[0]
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise WeightsError(
            f"{file}: {model} weight {key} has shape {got} in the file but the model expects {want}{more}",
            "the file and the model configuration are from different releases; check the folder and its YAMLs",
        )
    not_float = [k for k, v in tensors.items() if floats_only and not v.is_floating_point()]
    if not_float:
        raise WeightsError(f"{file}: {model} has non-float tensors ({_first(not_float)})",
                           "the file is damaged or not an official checkpoint; re-download it")


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (", …" if len(keys) > _SHOWN else "")
