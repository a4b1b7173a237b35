"""Weights: reading the official release safely, caching it as safetensors, fetching it from the Hub.

* `checkpoint` — read a torch.save `.ckpt` without executing pickled code (memory-mapped).
* `release`    — the release folder: pipeline.yaml + model YAMLs, settings, per-model state dicts.
* `keys`       — strict key/shape accounting against what a model expects.
* `duplicates` — byte-identical sub-models (the DINO copies), to hold one copy.
* `cache`      — one-time conversion to `.safetensors` (fp16/bf16/fp32), memory-mapped reloads.
* `hub`        — sources: a local folder or `hf:REPO[@REV]` (resumable, allow-listed, offline-aware).
* `locations`  — default folders (user data folder; THREEDFY_CACHE / THREEDFY_DOWNLOADS).
* `model_configs` — the release's YAML sections (+ values from outside the YAMLs) -> our model configs.
* `release_source` — a release spec -> (PipelineConfig, provider of cached state dicts, identity), for `sources`.

huggingface_hub is imported only when a hub source is used, safetensors only when a cache file is read.
"""
from .cache import cached_weights, load_cache_file, write_cache_file
from .checkpoint import Checkpoint, Opaque, read_checkpoint
from .keys import check_state_dict, expected_shapes
from .release import (ALL_MODELS, DEFAULT_MODELS, FLOAT32_KEYS, ModelWeights, PipelineSettings, Release,
                      open_release)

__all__ = [
    "ALL_MODELS", "DEFAULT_MODELS", "FLOAT32_KEYS", "Checkpoint", "ModelWeights", "Opaque", "PipelineSettings",
    "Release", "cached_weights", "check_state_dict", "expected_shapes", "load_cache_file", "open_release",
    "read_checkpoint", "write_cache_file",
]
