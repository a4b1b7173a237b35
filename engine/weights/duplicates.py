"""Finding sub-models whose tensors are byte-identical (e.g. the DINOv2 copies), so one copy can be held.

Cheap first, exact last: candidates must have the same keys, shapes and dtypes; then a fingerprint of a few
sampled bytes per tensor; only groups that still agree are compared in full (memory bandwidth, early exit).
Nothing is assumed: two copies are reported as shared only if every byte agrees.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

_SAMPLE_BYTES = 4096  # bytes fingerprinted at each end of each tensor


@dataclass(frozen=True)
class SharedCopy:
    """Sub-models with identical tensors. `members[0]` is the copy to keep; the others can reuse its tensors."""

    members: tuple[str, ...]  # candidate labels, e.g. "ss_condition:module_list.0.backbone."
    num_tensors: int  # tensors per copy
    nbytes: int  # bytes per copy


def find_identical(candidates: Mapping[str, Mapping[str, torch.Tensor]]) -> list[SharedCopy]:
    """Group the labelled sub-state-dicts that are identical (same keys, shapes, dtypes and bytes)."""
    by_layout: dict[tuple, list[str]] = {}
    for label, tensors in candidates.items():
        by_layout.setdefault(_layout(tensors), []).append(label)
    groups: list[SharedCopy] = []
    for labels in by_layout.values():
        if len(labels) < 2:
            continue
        by_fingerprint: dict[str, list[str]] = {}
        for label in labels:
            by_fingerprint.setdefault(_fingerprint(candidates[label]), []).append(label)
        for similar in by_fingerprint.values():
            remaining = list(similar)
            while len(remaining) > 1:
                first, rest = remaining[0], remaining[1:]
                same = [label for label in rest if _identical(candidates[first], candidates[label])]
                if same:
                    tensors = candidates[first]
                    groups.append(SharedCopy(members=(first, *same), num_tensors=len(tensors),
                                             nbytes=sum(t.numel() * t.element_size() for t in tensors.values())))
                remaining = [label for label in rest if label not in same]
    return groups


def _layout(tensors: Mapping[str, torch.Tensor]) -> tuple:
    return tuple(sorted((k, tuple(t.shape), t.dtype) for k, t in tensors.items()))


def _fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(tensors):
        raw = _bytes(tensors[key])
        digest.update(key.encode())
        digest.update(raw[:_SAMPLE_BYTES].numpy().tobytes())
        digest.update(raw[-_SAMPLE_BYTES:].numpy().tobytes())
    return digest.hexdigest()


def _identical(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return all(torch.equal(_bytes(a[k]), _bytes(b[k])) for k in a)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (a view when the tensor is contiguous)."""
    return t.contiguous().reshape(-1).view(torch.uint8)
