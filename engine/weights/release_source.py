"""A weights spec naming the official release (a folder or `hf:REPO[@REV]`) -> what the pipeline needs:
`(PipelineConfig, provider of state dicts by model name, identity string)`; see `sources.open_source`.

The provider reads each model's tensors from the release once, converts them to a `.safetensors` file in the
cache folder and afterwards hands out memory-mapped tensors from there (official key names, strict key sets).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cache import cached_weights
from .hub import HubSource, fetch_release, parse_source
from .model_configs import OutsideYaml, pipeline_config
from .release import DEFAULT_MODELS, FLOAT32_KEYS, Release
from .release import open_release as open_release_folder

NOT_IN_YAML = "not_in_yaml.json"  # beside pipeline.yaml in test folders (official_format_tiny); absent in the release

Provider = Callable[[str], dict[str, torch.Tensor]]


def open_release(
    spec: str | Path,
    *,
    not_in_yaml: str | Path | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    cache_dtype: torch.dtype | None = torch.float16,
    token: str | bool | None = None,
    endpoint: str | None = None,
    download_dir: str | Path | None = None,
    hf_cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> tuple[Any, Provider, str]:
    """(config, provider, identity) for a release folder or hub source.

    `not_in_yaml`: a not_in_yaml.json for the DINO dims / GroupNorm groups (default: the folder's own if it has one,
    else the real release's values). `cache=False` serves tensors straight from the `.ckpt` files (memory-mapped,
    as stored). `cache_dtype`: float16 / bfloat16 / float32, or None to keep the file's dtypes. The hub options
    are those of `hub.fetch_release`.
    """
    source = parse_source(spec)
    if isinstance(source, HubSource):
        fetched = fetch_release(source, models=DEFAULT_MODELS, token=token, endpoint=endpoint,
                                download_dir=download_dir, hf_cache_dir=hf_cache_dir, offline=offline,
                                progress=progress)
        release = fetched.open()
        identity = f"hf:{source.repo}@{fetched.commit}"
    else:
        release = open_release_folder(source, models=DEFAULT_MODELS)
        identity = str(source.resolve())
    outside = _outside(release, not_in_yaml)
    config = pipeline_config(release, outside)
    return config, _provider(release, cache, cache_dir, cache_dtype), identity


def _outside(release: Release, not_in_yaml: str | Path | None) -> OutsideYaml:
    if not_in_yaml is not None:
        return OutsideYaml.from_json(not_in_yaml)
    beside = release.files["pipeline.yaml"].parent / NOT_IN_YAML
    return OutsideYaml.from_json(beside) if beside.is_file() else OutsideYaml()


def _provider(release: Release, cache: bool, cache_dir: str | Path | None, dtype: torch.dtype | None) -> Provider:
    def read(name: str) -> dict[str, torch.Tensor]:
        return release.load([name])[name].tensors

    def provide(name: str) -> dict[str, torch.Tensor]:
        if not cache:
            return read(name)
        return cached_weights(name, release.identity(name), lambda: read(name), dtype=dtype,
                              keep_float32=FLOAT32_KEYS, cache_dir=cache_dir)

    return provide
