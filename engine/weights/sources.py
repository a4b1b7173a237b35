"""From a weights spec ("random", a folder, "hf:REPO[@REV]") to what the pipeline needs: a config, a provider of
state dicts by model name, and an identity string stored with the results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..config import MODEL_NAMES, PipelineConfig, preset
from ..errors import WeightsError
from ..random_weights import randomize_

Provider = Callable[[str], dict[str, torch.Tensor]]

DEMO_FOLDER = Path(__file__).resolve().parents[2] / "weights" / "demo"  # our small model, bundled when trained
RANDOM_OCCUPANCY = 0.0005  # fraction of the 64^3 cells a random SS decoder marks occupied (about 130 voxels)


def open_source(spec: str, preset_name: str = "official", *, seed: int = 0, **options: Any) -> tuple[PipelineConfig, Provider, str]:
    """(config, provider, identity) for a weights spec; see `Pipeline.from_source`."""
    if spec == "random":
        options.pop("cache_dtype", None)
        config = preset(preset_name)
        return config, random_provider(config, seed), f"random:{preset_name}:{seed}"
    from ..train.export import is_demo_folder, open_demo

    if spec == "demo":
        spec = str(DEMO_FOLDER)
        if not is_demo_folder(spec):
            raise WeightsError("the demo weights are not bundled with this copy (weights/demo/demo.json is missing)",
                               hint="use the official weights (hf:facebook/sam-3d-objects) or a local folder")
    if is_demo_folder(spec):
        return open_demo(spec, **options)
    from .release_source import open_release

    return open_release(spec, **options)


def random_provider(config: PipelineConfig, seed: int) -> Provider:
    """Seeded random weights per network (see `random_weights.py`).

    Random weights give arbitrary occupancy; so that smoke runs produce some geometry, the SS decoder's output bias
    is shifted so that about RANDOM_OCCUPANCY of the grid is occupied for a standard-normal latent.
    """
    from ..model_store import build

    def provide(name: str) -> dict[str, torch.Tensor]:
        if name not in MODEL_NAMES:
            raise WeightsError(f"no network named {name!r}")
        module = build(name, config)
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
        randomize_(module, seed * 1000 + MODEL_NAMES.index(name))
        if name == "ss_decoder":
            _calibrate_occupancy(module, config, seed)
        return {k: v.detach() for k, v in module.state_dict().items()}

    return provide


@torch.no_grad()
def _calibrate_occupancy(decoder: torch.nn.Module, config: PipelineConfig, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    r = config.ss_flow.resolution
    latent = torch.randn(1, r**3, config.ss_flow.shape_channels, generator=g)
    logits = decoder(latent).flatten()
    threshold = torch.quantile(logits[:: max(1, logits.numel() // 1_000_000)], 1 - RANDOM_OCCUPANCY)
    decoder.out_layer[-1].bias -= threshold
