"""Networks on demand: built on the meta device, filled from a weights provider, moved to the device, freed.

The pipeline asks for a network by name (`config.MODEL_NAMES`) just before a stage and releases it after, unless
the store keeps everything loaded. A provider returns a state dict with official key names for a name; it may
memory-map its tensors (safetensors), so a network costs device memory only while it is loaded.
Networks whose weights are identical (the DINO copies inside the two condition fusers) can share one module.
"""
from __future__ import annotations

import gc
from typing import Callable

import torch
from torch import nn

from .config import PipelineConfig
from .errors import WeightsError
from .models.condition import ConditionEmbedder
from .models.gs_decoder import GaussianDecoder
from .models.mesh_decoder import MeshDecoder
from .models.slat_flow import SlatFlowModel
from .models.ss_decoder import SSDecoder
from .models.ss_flow import SSFlow

Provider = Callable[[str], dict[str, torch.Tensor]]  # model name -> state dict (official key names)


def build(name: str, config: PipelineConfig) -> nn.Module:
    """The network `name` with its configuration (parameters wherever the current default device puts them)."""
    builders: dict[str, Callable[[], nn.Module]] = {
        "ss_condition": lambda: ConditionEmbedder(config.ss_condition),
        "ss_flow": lambda: SSFlow(config.ss_flow),
        "ss_decoder": lambda: SSDecoder(config.ss_decoder),
        "slat_condition": lambda: ConditionEmbedder(config.slat_condition),
        "slat_flow": lambda: SlatFlowModel(config.slat_flow),
        "gs_decoder": lambda: GaussianDecoder(config.gs_decoder),
        "mesh_decoder": lambda: MeshDecoder(config.mesh_decoder),
    }
    return builders[name]()


class ModelStore:
    def __init__(
        self,
        config: PipelineConfig,
        provider: Provider,
        device: torch.device,
        dtype: torch.dtype,
        keep_loaded: bool = True,
    ):
        self.config = config
        self.provider = provider
        self.device = device
        self.dtype = dtype
        self.keep_loaded = keep_loaded
        self._loaded: dict[str, nn.Module] = {}

    def get(self, name: str) -> nn.Module:
        """The network `name`, loaded on the device in eval mode (loads it on first use)."""
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def done_with(self, *names: str) -> None:
        """The pipeline no longer needs these for this run: free them unless everything is kept loaded."""
        if not self.keep_loaded:
            self.release(*names)

    def release(self, *names: str) -> None:
        """Free the named networks (all when none is named) and return their memory to the device."""
        for name in names or tuple(self._loaded):
            self._loaded.pop(name, None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def _load(self, name: str) -> nn.Module:
        with torch.device("meta"):
            module = build(name, self.config)
        state = self.provider(name)
        check_state_dict(name, module, state)
        module.load_state_dict(state, strict=True, assign=True)
        # Parameters in the compute dtype; buffers that hold integer data keep theirs.
        module = module.to(device=self.device)
        module = module.to(dtype=self.dtype) if self.dtype != torch.float32 else module.float()
        return module.eval().requires_grad_(False)


def check_state_dict(name: str, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Zero missing, zero unexpected keys and equal shapes, or one WeightsError naming what differs."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(
            f"weights for {name} do not match the model: {'; '.join(parts)}",
            hint="the checkpoint is of another model or version, or the preset is wrong",
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsError(
                f"weights for {name}: '{k}' has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}",
                hint="the checkpoint does not match the chosen preset/config",
            )
