"""The trained demo model as a weights folder the pipeline loads: one safetensors file per network + demo.json.

Folder layout (`write_demo`):

    demo.json                  format, version, the whole PipelineConfig, file per network, tied prefixes,
                               a sha256 per file, and what training recorded (command, steps, metrics)
    ss_condition.safetensors   state dict with our pipeline's key names (= the official names, no prefix)
    ss_flow.safetensors, ss_decoder.safetensors, slat_condition.safetensors, slat_flow.safetensors,
    gs_decoder.safetensors, mesh_decoder.safetensors

Floating-point tensors are stored as float16 (norm weights and the fixed position/offset tables as float32, as
the release cache keeps them). The two DINO copies inside a condition fuser are identical in the demo model, so
`module_list.1.*` is not stored: demo.json's "tied" maps that prefix to `module_list.0.` and the provider hands
the same tensors out under both names.

Loading (`open_demo`) returns what `engine.weights.sources.open_source` returns — (PipelineConfig, provider of
state dicts by network name, identity) — so `Pipeline(config, provider, ...)` runs it. To make
`Pipeline.from_source("demo")` / `Pipeline.from_source(<folder>)` work, `open_source` needs two lines (see
`is_demo_folder`). This module imports only the standard library, torch and (lazily) safetensors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import MODEL_NAMES, PipelineConfig
from ..errors import WeightsError

MANIFEST = "demo.json"
FORMAT = "3dfy-demo-weights"
VERSION = 1
FLOAT32_KEYS = ("latent_mapping.shape.pos_emb", "offset_perturbation")  # fixed tables, kept exact
NORM_SEGMENT = re.compile(r"^(norm\d*|[qk]_rms_norm)$")  # a norm module's name inside a key (also kept float32)
TIED_DINO = {"ss_condition": {"module_list.1.": "module_list.0."}, "slat_condition": {"module_list.1.": "module_list.0."}}

Provider = Callable[[str], dict[str, torch.Tensor]]


def write_demo(
    folder: str | Path,
    config: PipelineConfig,
    state_dicts: dict[str, dict[str, torch.Tensor]],
    training: dict[str, Any] | None = None,
) -> Path:
    """Write every network of MODEL_NAMES (state dicts with our key names) and demo.json into `folder`."""
    from safetensors.torch import save_file

    missing = [name for name in MODEL_NAMES if name not in state_dicts]
    if missing:
        raise WeightsError(f"cannot export the demo model: no weights for {', '.join(missing)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files, digests = {}, {}
    for name in MODEL_NAMES:
        tied = TIED_DINO.get(name, {})
        tensors = {}
        for key, value in state_dicts[name].items():
            if any(key.startswith(prefix) for prefix in tied):
                continue
            value = value.detach().to("cpu").contiguous()
            if value.is_floating_point():
                value = value.to(torch.float32 if _keep_float32(key) else torch.float16)
            tensors[key] = value
        path = folder / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={"format": FORMAT, "network": name})
        files[name] = path.name
        digests[name] = _sha256(path)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(config),
        "files": files,
        "sha256": digests,
        "tied": {name: TIED_DINO[name] for name in MODEL_NAMES if name in TIED_DINO},
        "training": training or {},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return folder


def is_demo_folder(spec: str | Path) -> bool:
    """True for a folder holding demo.json. The loading hook for `weights/sources.py open_source`:

        if is_demo_folder(spec):
            return open_demo(spec, **options)
    (and "demo" mapped to the bundled folder the same way)."""
    path = Path(spec)
    return path.is_dir() and (path / MANIFEST).is_file()


def open_demo(folder: str | Path, *, check: bool = False, **_options: Any) -> tuple[PipelineConfig, Provider, str]:
    """(config, provider, identity) of a demo weights folder. `check` verifies every file's sha256 first.
    Other keyword options of `open_source` (cache dtype, hub options) do not apply and are ignored."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    config = config_from_dict(PipelineConfig, manifest["config"])
    if "refine_layout" not in manifest["config"]:  # written before the option existed: the demo model's default
        config = dataclasses.replace(config, refine_layout=True)
    files = manifest["files"]
    for name in MODEL_NAMES:
        if name not in files or not (folder / files[name]).is_file():
            raise WeightsError(f"{folder}: the demo weights lack {files.get(name, name + '.safetensors')}",
                               "copy the whole demo folder again")
        if check and _sha256(folder / files[name]) != manifest.get("sha256", {}).get(name):
            raise WeightsError(f"{folder / files[name]}: its checksum differs from demo.json",
                               "the file is damaged; copy the demo folder again")

    def provide(name: str) -> dict[str, torch.Tensor]:
        if name not in files:
            raise WeightsError(f"the demo weights have no network named {name!r}")
        from safetensors.torch import load_file

        state = load_file(str(folder / files[name]))
        for alias, source in manifest.get("tied", {}).get(name, {}).items():
            state.update({alias + k[len(source):]: v for k, v in list(state.items()) if k.startswith(source)})
        return state

    digest = hashlib.sha256(json.dumps(manifest.get("sha256", {}), sort_keys=True).encode()).hexdigest()[:12]
    return config, provide, f"demo:{folder.resolve()}@{digest}"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot be read ({e})", "point to a folder written by engine.train.export") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise WeightsError(f"{path}: is not a version-{VERSION} {FORMAT} manifest",
                           "re-export the weights with this version of 3Dfy")
    return manifest


# ---- dataclass configs <-> JSON ---------------------------------------------------------------------------------


def config_to_dict(config: Any) -> Any:
    """A (nested) frozen dataclass config -> plain JSON data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [config_to_dict(v) for v in config]
    return config


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Inverse of `config_to_dict` for the dataclass `cls`, led by its type hints (missing fields keep defaults)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name])
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise WeightsError(f"unknown {cls.__name__} settings {unknown} in the config",
                           "the weights were written by another version of 3Dfy")
    return cls(**kwargs)


def _value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    options = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return config_from_dict(option, value)
    return _tuples(value)


def _is_union(hint: Any) -> bool:
    import types

    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _keep_float32(key: str) -> bool:
    return key in FLOAT32_KEYS or any(NORM_SEGMENT.match(part) for part in key.split("."))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
