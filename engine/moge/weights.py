"""Loading the public MoGe v1 checkpoint (`Ruicheng/moge-vitl` `model.pt`).

The file is a `torch.save` dict with two keys: `model` (the state dict, names exactly as `MoGeModel`'s) and
`model_config` (the constructor kwargs of the first public release, e.g. `encoder`, `trained_area_range`).
Keys map one to one; the load is strict (zero missing, zero unexpected, equal shapes).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import WeightsError
from ..weights.keys import check_state_dict
from ..weights.keys import expected_shapes
from ..weights.cache import cached_weights
from ..weights.checkpoint import read_torch_pickle
from ..weights.release import file_identity
from .model import MoGeConfig, MoGeModel

# encoder name -> (embed_dim, depth, num_heads). ViT-g uses a SwiGLU MLP and is not supported.
ENCODERS: dict[str, tuple[int, int, int]] = {
    "dinov2_vits14": (384, 12, 6),
    "dinov2_vitb14": (768, 12, 12),
    "dinov2_vitl14": (1024, 24, 16),
    "dinov2_tiny14": (64, 3, 4),  # the parity goldens' test backbone (../shared/parity/moge)
}
# model_config keys that upstream accepts and ignores (the head always predicts points and a mask).
IGNORED_CONFIG_KEYS = {"output_mask", "split_head"}


def load_moge(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              cache: bool = True, cache_dir: str | Path | None = None) -> MoGeModel:
    """Read a MoGe v1 `model.pt` and return the model in eval mode on `device`, weights cast to `dtype`.

    The file is read with the engine's restricted loader (no pickled code runs) and, with `cache`, converted
    once to a `.safetensors` file in `dtype` in the weights cache and memory-mapped from there afterwards.
    Raises WeightsError (one line naming the file) when the file is missing, not a readable checkpoint, or does
    not match the architecture its config describes.
    """
    path = Path(path)
    state_dict, model_config = read_checkpoint(path)
    cfg = config_from_checkpoint(model_config, path)
    with torch.device("meta"):
        model = MoGeModel(cfg)
    check_state_dict(state_dict, expected_shapes(model), file=path, model="MoGe", floats_only=True)
    if cache:
        identity = {**file_identity(path), "model": "moge"}
        keep = None if dtype == torch.float32 else dtype
        state_dict = cached_weights("moge", identity, lambda: state_dict, dtype=keep, cache_dir=cache_dir)
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    return model.to(device).eval()


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """`model.pt` -> (state dict, model_config dict), without executing any code from the file."""
    if not path.is_file():
        raise WeightsError(f"MoGe checkpoint {path} not found", "download Ruicheng/moge-vitl model.pt or pick the file")
    blob = read_torch_pickle(path)  # WeightsError naming the file for anything unsafe, corrupt or foreign
    if not (isinstance(blob, dict) and isinstance(blob.get("model"), dict) and isinstance(blob.get("model_config"), dict)):
        keys = sorted(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise WeightsError(
            f"MoGe checkpoint {path} is not a MoGe v1 model.pt: expected keys 'model' and 'model_config', got {keys}"
        )
    state_dict = blob["model"]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"MoGe checkpoint {path}: entries {bad[:3]} of 'model' are not tensors")
    return dict(state_dict), blob["model_config"]


def config_from_checkpoint(model_config: dict, path: str | Path = "model.pt") -> MoGeConfig:
    """Translate the checkpoint's constructor kwargs (first-release names) into a MoGeConfig.

    `trained_area_range [a, b]` becomes `num_tokens_range [a // 196, b // 196]` (what upstream's current code
    does: the public model's level 9 is 2551 tokens); `output_mask`/`split_head` are ignored as upstream does.
    """
    config = dict(model_config)
    encoder = config.pop("encoder", "dinov2_vitb14")
    if encoder not in ENCODERS:
        raise WeightsError(f"MoGe checkpoint {path}: encoder {encoder!r} is not supported (only {sorted(ENCODERS)})")
    embed_dim, depth, num_heads = ENCODERS[encoder]
    remap = config.pop("remap_output", None)
    if remap != "exp":
        raise WeightsError(f"MoGe checkpoint {path}: remap_output {remap!r} is not supported (only 'exp')")
    if config.pop("res_block_norm", "group_norm") != "group_norm" or config.pop("last_res_blocks", 0) != 0:
        raise WeightsError(f"MoGe checkpoint {path}: only res_block_norm 'group_norm', last_res_blocks 0 are supported")
    if "trained_area_range" in config:
        low, high = config.pop("trained_area_range")
        config.setdefault("num_tokens_range", [low // 14**2, high // 14**2])
    kwargs = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    for key in ("intermediate_layers", "dim_proj", "dim_times_res_block_hidden", "num_res_blocks",
                "last_conv_channels", "last_conv_size", "mask_threshold"):
        if key in config:
            kwargs[key] = config.pop(key)
    for key in ("dim_upsample", "num_tokens_range"):
        if key in config:
            kwargs[key] = tuple(config.pop(key))
    unknown = sorted(set(config) - IGNORED_CONFIG_KEYS)
    if unknown:
        warnings.warn(f"MoGe checkpoint {path}: ignoring unknown model_config keys {unknown}", stacklevel=2)
    if not isinstance(kwargs.get("intermediate_layers", 4), int):
        raise WeightsError(f"MoGe checkpoint {path}: intermediate_layers must be an int (the last n blocks)")
    try:
        return MoGeConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"MoGe checkpoint {path}: unusable model_config ({e})") from None
