"""Converted weights: each model's state dict, once, as a `.safetensors` file that later loads memory-mapped.

A cache file is named `<model>-<key>.safetensors`; the key hashes the source identity (repo + commit + file, or
local path + size + mtime), the dtype policy and `CACHE_FORMAT`, so a changed source or policy never reuses a
stale file. Writing streams one tensor at a time into a temporary file (no second copy of the model in memory)
that is renamed into place only when complete: an interrupted conversion leaves no cache file. A cache file that
does not read back (truncated, corrupt header, other format, other source) is rebuilt, or reported if it cannot be.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .locations import default_cache_dir

CACHE_FORMAT = 1  # bump when the layout of cache files or their keys change

_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_CAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def cached_weights(
    name: str,
    identity: Mapping[str, Any],
    build: Callable[[], Mapping[str, torch.Tensor]],
    *,
    dtype: torch.dtype | None = torch.float16,
    keep_float32: Iterable[str] = (),
    cache_dir: str | Path | None = None,
    verify: bool = False,
) -> dict[str, torch.Tensor]:
    """The model's tensors from the cache (memory-mapped), converting them first with `build()` if needed.

    `dtype` is the floating-point dtype to store (float16 / bfloat16 / float32; None keeps each tensor's own);
    keys matching a `keep_float32` pattern (fnmatch, e.g. "*.pos_emb") are stored as float32; integer and bool
    tensors are never cast. `verify=True` also re-hashes the data of an existing file (detects bit rot).
    """
    path = cache_path(name, identity, dtype=dtype, keep_float32=keep_float32, cache_dir=cache_dir)
    if path.exists():
        try:
            return load_cache_file(path, identity=identity, verify=verify)
        except WeightsError:
            path.unlink(missing_ok=True)  # corrupt or foreign: rebuild below
    write_cache_file(path, build(), identity=identity, dtype=dtype, keep_float32=keep_float32)
    return load_cache_file(path, identity=identity)


def cache_path(name: str, identity: Mapping[str, Any], *, dtype: torch.dtype | None,
               keep_float32: Iterable[str] = (), cache_dir: str | Path | None = None) -> Path:
    """Where the converted tensors of `name` from source `identity` under this dtype policy live."""
    if dtype is not None and dtype not in _CAST_DTYPES:
        raise WeightsError(f"cannot store weights as {dtype}", "choose float16, bfloat16 or float32")
    policy = {"format": CACHE_FORMAT, "identity": dict(identity), "dtype": _dtype_name(dtype),
              "keep_float32": sorted(set(keep_float32))}
    key = hashlib.sha256(json.dumps(policy, sort_keys=True, default=str).encode()).hexdigest()[:20]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{safe_name}-{key}.safetensors"


def write_cache_file(path: str | Path, tensors: Mapping[str, torch.Tensor], *, identity: Mapping[str, Any],
                     dtype: torch.dtype | None = torch.float16, keep_float32: Iterable[str] = ()) -> Path:
    """Write `tensors` (cast per the policy) as a safetensors file, atomically: temp file, fsync, rename."""
    path = Path(path)
    patterns = tuple(keep_float32)
    plan = []  # (key, stored dtype, shape)
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is not a tensor", "this is a bug in the caller")
        target = _stored_dtype(key, t.dtype, dtype, patterns)
        if target not in _SAFETENSORS_DTYPES:
            raise WeightsError(f"{path}: tensor {key} has dtype {t.dtype}, which the cache cannot store",
                               "convert it first")
        plan.append((key, target, tuple(t.shape)))
    # Larger elements first keeps every tensor aligned to its element size (the data must be contiguous).
    plan.sort(key=lambda p: (-torch.empty((), dtype=p[1]).element_size(), p[0]))
    header: dict[str, Any] = {}
    offset = 0
    for key, target, shape in plan:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=target).element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[target], "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": str(CACHE_FORMAT), "identity": _canonical(identity),
                              "num_tensors": str(len(plan)), "data_bytes": str(offset),
                              "data_blake2b": "0" * 32}  # known after the data: patched in place (same length)
    header_bytes = _header_bytes(header)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        digest = hashlib.blake2b(digest_size=16)
        with open(tmp, "wb") as f:
            f.write(header_bytes)
            for key, target, _ in plan:
                data = tensors[key].detach().to(target).contiguous().reshape(-1).view(torch.uint8).numpy()
                view = memoryview(data)
                digest.update(view)
                f.write(view)
                del data, view
            header["__metadata__"]["data_blake2b"] = digest.hexdigest()
            patched = _header_bytes(header)
            assert len(patched) == len(header_bytes)
            f.seek(0)
            f.write(patched)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_cache_file(path: str | Path, *, identity: Mapping[str, Any] | None = None,
                    verify: bool = False) -> dict[str, torch.Tensor]:
    """Memory-map a cache file. Raises `WeightsError` if it is truncated, corrupt, of another format or (when
    `identity` is given) converted from another source; `verify` re-hashes the data."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    hint = f"delete {path.name} from the cache folder; it is rebuilt from the original weights"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            if meta.get("format") != str(CACHE_FORMAT):
                raise WeightsError(f"{path}: is not a cache file of format {CACHE_FORMAT}", hint)
            if identity is not None and meta.get("identity") != _canonical(identity):
                raise WeightsError(f"{path}: was converted from another source", hint)
            if meta.get("num_tensors") != str(len(keys)):
                raise WeightsError(f"{path}: is incomplete ({len(keys)} of {meta.get('num_tensors')} tensors)", hint)
            tensors = {k: f.get_tensor(k) for k in keys}
    except SafetensorError as e:
        raise WeightsError(f"{path}: is truncated or corrupt ({e})", hint) from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot be read ({e})", hint) from None
    if verify and _data_digest(path) != meta.get("data_blake2b"):
        raise WeightsError(f"{path}: its data fails the checksum", hint)
    return tensors


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _stored_dtype(key: str, source: torch.dtype, dtype: torch.dtype | None,
                  keep_float32: tuple[str, ...]) -> torch.dtype:
    if not source.is_floating_point:
        return source
    if any(fnmatch.fnmatchcase(key, p) for p in keep_float32):
        return torch.float32
    return source if dtype is None else dtype


def _header_bytes(header: Mapping[str, Any]) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _data_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(identity: Mapping[str, Any]) -> str:
    return json.dumps(dict(identity), sort_keys=True, default=str)


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "source" if dtype is None else str(dtype).replace("torch.", "")
