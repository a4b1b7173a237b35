"""Networks on demand: built on the meta device, filled from a weights provider, moved to the device, freed.

The pipeline asks for a network by name (`config.MODEL_NAMES`) just before a stage and releases it after, unless
the store keeps everything loaded. A provider returns a state dict with official key names for a name; it may
memory-map its tensors (safetensors), so a network costs device memory only while it is loaded.
Networks whose weights are identical (the DINO copies inside the two condition fusers) can share one module.

Loading casts before the copy: each tensor reaches the device already in the compute dtype (half the bus bytes
of float32 for bf16), so device memory never holds a float32 copy. To a GPU, host tensors go through two pinned
staging buffers, the cast into one overlapping the copy out of the other.
"""
from __future__ import annotations

import gc
from typing import Callable

import torch
from torch import nn

from .config import PipelineConfig
from .weights.keys import check_state_dict, expected_shapes
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
        source_name: str = "the weights",
    ):
        self.config = config
        self.provider = provider
        self.source_name = source_name  # named in weight errors (a folder, hf:REPO@commit, random)
        self.device = device
        self.dtype = dtype
        self.keep_loaded = keep_loaded
        self._loaded: dict[str, nn.Module] = {}
        # Called with a network's name just before it is freed: whatever reads its weights (CUDA graphs) goes first.
        self.on_release: list[Callable[[str], None]] = []

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
            if name in self._loaded:
                for listener in self.on_release:
                    listener(name)
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
        check_state_dict(state, expected_shapes(module), file=self.source_name, model=name)
        # Floating-point tensors in the compute dtype, cast before they reach the device; integer buffers keep theirs.
        module.load_state_dict(to_device(state, self.device, self.dtype), strict=True, assign=True)
        return module.eval().requires_grad_(False)


def to_device(
    state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype, chunk_bytes: int = 32 << 20
) -> dict[str, torch.Tensor]:
    """`state` on `device`, floating-point tensors in `dtype` (others keep theirs), tensors shared between keys
    kept shared. Host -> GPU: cast on the host into a pinned buffer, copy from it asynchronously, in chunks of at
    most `chunk_bytes` through two buffers (the cast of one chunk overlaps the copy of the previous); the device
    holds only the result."""
    staging = _Staging(device, chunk_bytes) if device.type == "cuda" else None
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for key, tensor in state.items():
        if id(tensor) not in done:
            target = dtype if tensor.is_floating_point() else tensor.dtype
            if staging is not None and tensor.device.type == "cpu":
                done[id(tensor)] = staging.copy(tensor, target)
            else:
                done[id(tensor)] = tensor.to(device=device, dtype=target)
        out[key] = done[id(tensor)]
    if staging is not None:
        staging.finish()
    return out


class _Staging:
    """Two pinned host buffers for host -> GPU copies with the cast done on the host (see `to_device`)."""

    def __init__(self, device: torch.device, chunk_bytes: int):
        self.device = device
        self.chunk_bytes = chunk_bytes
        self.buffers = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def copy(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(tensor.shape, dtype=dtype, device=self.device)
        src, dst = tensor.reshape(-1), out.view(-1)  # (n,) each
        step = max(1, self.chunk_bytes // out.element_size())
        for start in range(0, src.numel(), step):
            stop = min(start + step, src.numel())
            buffer = self._next_buffer()
            pinned = buffer[: (stop - start) * out.element_size()].view(dtype)  # (stop - start,)
            pinned.copy_(src[start:stop])  # the cast, on the host
            dst[start:stop].copy_(pinned, non_blocking=True)
            self._record()
        return out

    def finish(self) -> None:
        torch.cuda.current_stream(self.device).synchronize()

    def _next_buffer(self) -> torch.Tensor:
        self.turn ^= 1
        event = self.events[self.turn]
        if event is not None:
            event.synchronize()  # its last copy to the device has finished: the buffer is free
        return self.buffers[self.turn]

    def _record(self) -> None:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self.events[self.turn] = event
