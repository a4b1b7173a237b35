"""The official release folder (`checkpoints/` of HF `facebook/sam-3d-objects`): YAMLs, settings, weights.

`pipeline.yaml` names one YAML + one `.ckpt` per model file; everything is read with `yaml.safe_load` (hydra
`_target_` strings are plain data, nothing is imported or instantiated). Model files and our models:

* `ss_generator` -> `ss_flow` (keys `_base_models.generator.reverse_fn.backbone.*`, YAML section
  `module.generator.backbone.reverse_fn.backbone`) and `ss_condition` (keys `_base_models.condition_embedder.*`,
  section `module.condition_embedder.backbone`); prefixes stripped;
* `slat_generator` -> `slat_flow` and `slat_condition`, the same way;
* `ss_decoder` -> `ss_decoder`, `slat_decoder_gs` -> `gs_decoder`, `slat_decoder_mesh` -> `mesh_decoder`,
  `slat_decoder_gs_4` -> `gs_decoder_4` (loaded upstream but unused by a run, so not in DEFAULT_MODELS): raw state
  dicts, the whole file is the YAML section.

Other `_base_models.*` prefixes in a generator file (the SS-decoder copy in `ss_generator.ckpt`) are skipped, as
upstream's prefix filter does. Our module names equal the official names without the prefix, so the returned
dicts load strictly into our modules. Pipeline settings not in `pipeline.yaml` take the upstream code defaults.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
import yaml

from ..errors import WeightsError
from .checkpoint import read_checkpoint
from .duplicates import SharedCopy, find_identical

PIPELINE_YAML = "pipeline.yaml"
GENERATOR_PREFIX = "_base_models.generator."
CONDITION_PREFIX = "_base_models.condition_embedder."
BACKBONE_PREFIX = "reverse_fn.backbone."  # inside the generator: the flow network (ShortCut/FlowMatching wrap it)
OTHER_MODELS_PREFIX = "_base_models."


@dataclass(frozen=True)
class ModelSpec:
    """Where one of our models lives in the release."""

    name: str  # our model name
    file: str  # pipeline.yaml stem: `<file>_config_path`, `<file>_ckpt_path`
    prefix: str  # key prefix in the checkpoint ("" for raw state dicts)
    section: tuple[str, ...]  # path of the model's YAML section inside the file's YAML (empty = whole file)


MODEL_SPECS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("ss_flow", "ss_generator", GENERATOR_PREFIX + BACKBONE_PREFIX,
              ("module", "generator", "backbone", "reverse_fn", "backbone")),
    ModelSpec("ss_condition", "ss_generator", CONDITION_PREFIX, ("module", "condition_embedder", "backbone")),
    ModelSpec("slat_flow", "slat_generator", GENERATOR_PREFIX + BACKBONE_PREFIX,
              ("module", "generator", "backbone", "reverse_fn", "backbone")),
    ModelSpec("slat_condition", "slat_generator", CONDITION_PREFIX, ("module", "condition_embedder", "backbone")),
    ModelSpec("ss_decoder", "ss_decoder", "", ()),
    ModelSpec("gs_decoder", "slat_decoder_gs", "", ()),
    ModelSpec("gs_decoder_4", "slat_decoder_gs_4", "", ()),
    ModelSpec("mesh_decoder", "slat_decoder_mesh", "", ()),
)}
ALL_MODELS: tuple[str, ...] = tuple(MODEL_SPECS)
DEFAULT_MODELS: tuple[str, ...] = tuple(n for n in ALL_MODELS if n != "gs_decoder_4")  # what a run uses

# Keys worth keeping in float32 when the weights are cached in fp16/bf16 (cache.cached_weights `keep_float32`):
# the fixed sin/cos table, the Gaussian offsets (atanh values, stored fp32 upstream) and norm affine parameters
# (upstream keeps them fp32 even in its fp16 files). All are small.
FLOAT32_KEYS: tuple[str, ...] = ("latent_mapping.shape.pos_emb", "offset_perturbation", "*norm*")

# Upstream `InferencePipeline.__init__` defaults for what pipeline.yaml does not set (same for every release;
# ../shared/parity/official_format_tiny/not_in_yaml.json lists them too).
PIPELINE_CODE_DEFAULTS: dict[str, Any] = {
    "ss_inference_steps": 25,
    "ss_rescale_t": 3,
    "ss_cfg_strength": 7,
    "ss_cfg_interval": [0, 500],
    "ss_cfg_strength_pm": 0.0,
    "slat_inference_steps": 25,
    "slat_cfg_interval": [0, 500],
    "decode_formats": ["gaussian", "mesh"],
}


@dataclass(frozen=True)
class PipelineSettings:
    """Run settings of the release: pipeline.yaml, else the upstream code defaults."""

    ss_inference_steps: int  # stage-1 sampler steps (25)
    ss_rescale_t: float  # stage-1 time warp (3)
    ss_cfg_strength: float  # stage-1 classifier-free guidance strength (7)
    ss_cfg_interval: tuple[float, float]  # guidance applied while 1000·t is inside ([0, 500])
    ss_cfg_strength_pm: float  # guidance on the pose modalities (0)
    slat_inference_steps: int  # stage-2 sampler steps (25)
    slat_rescale_t: float  # stage-2 time warp (1)
    slat_cfg_strength: float  # stage-2 guidance strength (1)
    slat_cfg_interval: tuple[float, float]  # ([0, 500])
    slat_mean: tuple[float, ...]  # (8,) SLAT latent de-normalisation
    slat_std: tuple[float, ...]  # (8,)
    decode_formats: tuple[str, ...]  # ("gaussian", "mesh")
    dtype: str  # autocast dtype upstream uses on GPU ("float16")
    downsample_ss_dist: int  # 1 = prune interior voxels
    pose_decoder_name: str  # "ScaleShiftInvariant"
    image_size: int  # side of the preprocessed image (518; 56 in the tiny folder), from the preprocessors' Resize


@dataclass
class ModelWeights:
    """One model's tensors, keyed by our module names, with the YAML section that configures it."""

    name: str
    file: Path  # the .ckpt they came from
    prefix: str  # stripped from every key ("" for raw state dicts)
    tensors: dict[str, torch.Tensor]
    section: dict[str, Any]  # the raw YAML section (plain dicts/lists/scalars)
    skipped: list[str] = field(default_factory=list)  # keys of the file that belong to no model here


@dataclass
class Release:
    """An opened release: parsed YAMLs and settings; weights are read on demand with `load`."""

    where: str  # folder path, or the hub source, for messages
    files: dict[str, Path]  # name as pipeline.yaml writes it -> local path
    pipeline: dict[str, Any]  # parsed pipeline.yaml
    yamls: dict[str, dict[str, Any]]  # file stem -> parsed model YAML
    settings: PipelineSettings
    models: tuple[str, ...]  # the models this release was opened for
    identities: dict[str, dict[str, Any]]  # file name -> source identity (for cache keys)

    def ckpt_path(self, model: str) -> Path:
        return self.files[self._name(MODEL_SPECS[model].file, "ckpt")]

    def yaml_path(self, model: str) -> Path:
        return self.files[self._name(MODEL_SPECS[model].file, "config")]

    def section(self, model: str) -> dict[str, Any]:
        """The raw YAML section of one of our models (a plain dict)."""
        spec = MODEL_SPECS[model]
        node: Any = self.yamls[spec.file]
        for part in spec.section:
            if not isinstance(node, dict) or part not in node:
                yaml_name = self._name(spec.file, "config")
                raise WeightsError(f"{self.files[yaml_name]}: has no {'.'.join(spec.section)} section",
                                   "the YAML is not the official one; re-download the release")
            node = node[part]
        return node

    def identity(self, model: str) -> dict[str, Any]:
        """What identifies the source of a model's tensors (for cache keys): the ckpt's identity + model + prefix."""
        spec = MODEL_SPECS[model]
        return {"model": model, "prefix": spec.prefix, **self.identities[self._name(spec.file, "ckpt")]}

    def load(self, models: Iterable[str] | None = None, *, mmap: bool = True) -> dict[str, ModelWeights]:
        """Read the tensors of `models` (default: those the release was opened for), each file once."""
        wanted = list(self.models if models is None else models)
        for name in wanted:
            if name not in self.models:
                raise WeightsError(f"{self.where}: model {name} was not requested when the release was opened",
                                   f"open it with models including {name}")
        out: dict[str, ModelWeights] = {}
        for stem in dict.fromkeys(MODEL_SPECS[n].file for n in wanted):
            path = self.files[self._name(stem, "ckpt")]
            checkpoint = read_checkpoint(path, mmap=mmap)
            names = [n for n in wanted if MODEL_SPECS[n].file == stem]
            if MODEL_SPECS[names[0]].prefix:
                if checkpoint.layout != "lightning":
                    raise WeightsError(f"{path}: is a raw state dict, but a generator file is a Lightning checkpoint",
                                       "the file is not the official one; re-download the release")
                parts, skipped = split_generator(checkpoint.state_dict, path)
            else:
                parts, skipped = {"": checkpoint.state_dict}, []
            for name in names:
                spec = MODEL_SPECS[name]
                key = "generator" if spec.prefix.startswith(GENERATOR_PREFIX) else "condition" if spec.prefix else ""
                tensors = parts[key]
                if not tensors:
                    raise WeightsError(f"{path}: holds no tensors under {spec.prefix or 'the top level'}",
                                       "the file is not the official one; re-download the release")
                out[name] = ModelWeights(name=name, file=path, prefix=spec.prefix, tensors=tensors,
                                         section=self.section(name), skipped=skipped)
            del checkpoint
        return out

    def find_shared_dinos(self, weights: Mapping[str, ModelWeights]) -> list[SharedCopy]:
        """DINO copies (any `module_list.i` whose YAML entry is a Dino) that are byte-identical, across both
        condition embedders. Labels are `"<model>:module_list.<i>.backbone."`; keep `members[0]`."""
        candidates: dict[str, dict[str, torch.Tensor]] = {}
        for name in ("ss_condition", "slat_condition"):
            if name not in weights:
                continue
            for i, entry in enumerate(self.section(name).get("embedder_list", [])):
                head = entry[0] if isinstance(entry, list) and entry else None
                target = str(head.get("_target_", "")) if isinstance(head, dict) else ""
                if not target.endswith(".Dino"):
                    continue
                prefix = f"module_list.{i}.backbone."
                sub = {k[len(prefix):]: v for k, v in weights[name].tensors.items() if k.startswith(prefix)}
                if sub:
                    candidates[f"{name}:{prefix}"] = sub
        return find_identical(candidates)

    def _name(self, stem: str, what: str) -> str:
        return referenced_name(self.pipeline, stem, what, self.where)


def open_release(
    source: str | Path | Mapping[str, str | Path],
    *,
    models: Iterable[str] = DEFAULT_MODELS,
    identities: Mapping[str, Mapping[str, Any]] | None = None,
    code_defaults: Mapping[str, Any] | None = None,
    where: str | None = None,
) -> Release:
    """Open a release: a folder (the real `checkpoints/` or a copy of its layout) or a mapping of the file names
    pipeline.yaml uses -> local paths (what `hub.fetch_release` returns). Parses every YAML the `models` need and
    checks that their `.ckpt` files exist; tensors are read later by `Release.load`."""
    models = tuple(models)
    for name in models:
        if name not in MODEL_SPECS:
            raise WeightsError(f"unknown model {name!r}", f"choose from {', '.join(ALL_MODELS)}")
    if isinstance(source, Mapping):
        files = {str(k): Path(v) for k, v in source.items()}
        folder = None
        where = where or str(Path(files[PIPELINE_YAML]).parent if PIPELINE_YAML in files else "the given files")
    else:
        folder = Path(source)
        files = {}
        where = where or str(folder)
        if not folder.is_dir():
            raise WeightsError(f"{folder}: weights folder not found",
                               "choose the folder that holds pipeline.yaml (the release's checkpoints/ folder)")

    def local(name: str) -> Path:
        path = files.get(name) if folder is None else folder / name
        if path is None or not path.is_file():
            raise WeightsError(f"{where}: {name} is missing",
                               "the release is incomplete; download it again or choose the full checkpoints/ folder")
        files[name] = path
        return path

    pipeline = _read_yaml(local(PIPELINE_YAML))
    if not isinstance(pipeline, dict):
        raise WeightsError(f"{files[PIPELINE_YAML]}: is not a pipeline configuration", "re-download the release")
    yamls: dict[str, dict[str, Any]] = {}
    for stem in dict.fromkeys(MODEL_SPECS[n].file for n in models):
        config = _read_yaml(local(referenced_name(pipeline, stem, "config", where)))
        if not isinstance(config, dict):
            raise WeightsError(f"{files[referenced_name(pipeline, stem, 'config', where)]}: is empty or not a mapping",
                               "re-download the release")
        yamls[stem] = config
        local(referenced_name(pipeline, stem, "ckpt", where))
    ids = {name: dict(identities[name]) if identities and name in identities else file_identity(path)
           for name, path in files.items()}
    settings = pipeline_settings(pipeline, code_defaults=code_defaults, where=str(files[PIPELINE_YAML]))
    release = Release(where=where, files=files, pipeline=pipeline, yamls=yamls, settings=settings, models=models,
                      identities=ids)
    for name in models:
        release.section(name)  # every section must exist
    return release


def split_generator(state_dict: Mapping[str, torch.Tensor], file: str | Path
                    ) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split a generator checkpoint's tensors into {"generator": flow network, "condition": condition embedder}
    (prefixes stripped). Other `_base_models.*` entries and non-model keys are returned as skipped; a generator key
    outside `reverse_fn.backbone.` is an error (upstream would fail its strict load)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"generator": {}, "condition": {}}
    skipped: list[str] = []
    stray: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(GENERATOR_PREFIX):
            inner = key[len(GENERATOR_PREFIX):]
            if inner.startswith(BACKBONE_PREFIX):
                parts["generator"][inner[len(BACKBONE_PREFIX):]] = value
            else:
                stray.append(key)
        elif key.startswith(CONDITION_PREFIX):
            parts["condition"][key[len(CONDITION_PREFIX):]] = value
        else:
            skipped.append(key)
    if stray:
        raise WeightsError(f"{file}: {len(stray)} generator keys outside {BACKBONE_PREFIX} ({', '.join(stray[:3])})",
                           "the file is not from the supported release; re-download the official one")
    return parts, skipped


def pipeline_settings(pipeline: Mapping[str, Any], *, code_defaults: Mapping[str, Any] | None = None,
                      where: str = PIPELINE_YAML) -> PipelineSettings:
    """Settings from a parsed pipeline.yaml; keys it lacks come from `code_defaults` (default: upstream's)."""
    defaults = dict(PIPELINE_CODE_DEFAULTS if code_defaults is None else code_defaults)

    def get(key: str) -> Any:
        if key in pipeline:
            return pipeline[key]
        if key in defaults:
            return defaults[key]
        raise WeightsError(f"{where}: lacks {key}", "the pipeline.yaml is not the official one; re-download it")

    def number(key: str) -> float:
        value = get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WeightsError(f"{where}: {key} is {value!r}, not a number", "re-download pipeline.yaml")
        return float(value)

    def numbers(key: str, length: int | None = None) -> tuple[float, ...]:
        value = get(key)
        if not isinstance(value, list) or (length is not None and len(value) != length) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise WeightsError(f"{where}: {key} is {value!r}, not a list of {length or 'some'} numbers",
                               "re-download pipeline.yaml")
        return tuple(float(v) for v in value)

    slat_mean = numbers("slat_mean")
    slat_std = numbers("slat_std", len(slat_mean))
    return PipelineSettings(
        ss_inference_steps=int(number("ss_inference_steps")),
        ss_rescale_t=number("ss_rescale_t"),
        ss_cfg_strength=number("ss_cfg_strength"),
        ss_cfg_interval=numbers("ss_cfg_interval", 2),  # type: ignore[arg-type]
        ss_cfg_strength_pm=number("ss_cfg_strength_pm"),
        slat_inference_steps=int(number("slat_inference_steps")),
        slat_rescale_t=number("slat_rescale_t"),
        slat_cfg_strength=number("slat_cfg_strength"),
        slat_cfg_interval=numbers("slat_cfg_interval", 2),  # type: ignore[arg-type]
        slat_mean=slat_mean,
        slat_std=slat_std,
        decode_formats=tuple(str(v) for v in get("decode_formats")),
        dtype=str(get("dtype")),
        downsample_ss_dist=int(number("downsample_ss_dist")),
        pose_decoder_name=str(get("pose_decoder_name")),
        image_size=_image_size(pipeline, where),
    )


def file_identity(path: Path) -> dict[str, Any]:
    """A local file's identity for cache keys: absolute path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def referenced_name(pipeline: Mapping[str, Any], stem: str, what: str, where: str) -> str:
    """The file name pipeline.yaml gives for `<stem>_<what>_path` (a plain relative name, never leaving the folder)."""
    key = f"{stem}_{what}_path"
    name = pipeline.get(key)
    if not isinstance(name, str) or not name:
        raise WeightsError(f"{where}: pipeline.yaml has no {key}", "the pipeline.yaml is not the official one")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if PurePosixPath(name).is_absolute() or not parts or any(p in ("..", "") for p in parts) or ":" in name:
        raise WeightsError(f"{where}: pipeline.yaml's {key} ({name}) points outside the release folder",
                           "use the official pipeline.yaml")
    return "/".join(parts)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: is not valid YAML ({first})", "re-download the release") from None


def _image_size(pipeline: Mapping[str, Any], where: str) -> int:
    """The `Resize` size of the preprocessors' image transform (all Resize entries must agree)."""
    sizes: set[int] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).endswith(".Resize") and isinstance(node.get("size"), int):
                sizes.add(node["size"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit({k: pipeline.get(k) for k in ("ss_preprocessor", "slat_preprocessor")})
    if len(sizes) != 1:
        raise WeightsError(f"{where}: the preprocessors' Resize sizes are {sorted(sizes) or 'missing'}, expected one",
                           "use the official pipeline.yaml")
    return sizes.pop()
