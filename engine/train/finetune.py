"""Start a training run from an exported demo model, to train its stage 2 again (or longer):

    python -m engine.train --out DIR --from-export WEIGHTS --slat-encoder CHECKPOINT [--minutes 8] [--device cuda]
                           [--restart-stage2]

The run folder is seeded so that `train.py` sees stages `ss_vae`, `slat_ae` and `stage1` as done, with the export's
networks as their weights and the export's training record as their progress, and stage 2 starts from the export's
stage-2 networks (`checkpoints/stage2.init.pt`, read by `Stage2`) at half the learning rate. With --restart-stage2
stage 2 starts afresh instead, exactly as in a whole run (from stage 1's image branch, the full learning rate):
with --minutes 7 that is the stage 2 of a 20-minute run. --minutes is stage 2's own budget.

The export holds what the pipeline runs, not the training-only encoders; stage 2's targets need the SLAT encoder:
a run's `checkpoints/slat_ae.pt`, or a file holding {"slat_encoder": state dict}.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import InputError, WeightsError
from .export import config_to_dict, open_demo, read_manifest

DONE_STAGES = {"ss_vae": ("ss_decoder",), "slat_ae": ("gs_decoder", "mesh_decoder"), "stage1": ("ss_condition", "ss_flow")}
STAGE2_NETWORKS = ("slat_condition", "slat_flow")
LR_FACTOR = 0.5  # the networks are trained already: a gentler start than from scratch


def seed_run(out: Path, config, export: Path, slat_encoder: Path, restart: bool = False) -> None:
    """Write the run folder `out` (new or empty) for a stage-2 run on `export`'s first three stages. config: the
    TrainConfig; stage 2 gets the whole time budget and continues the export's stage 2 at half its learning rate,
    or, with `restart`, starts afresh at the full rate."""
    if (out / "state.json").is_file():
        raise InputError(f"{out} already holds a training run", "give --from-export a new --out folder")
    manifest = read_manifest(export)
    _, provide, identity = open_demo(export, check=True)
    encoder = _slat_encoder(slat_encoder)
    stages = manifest.get("training", {}).get("stages", {})
    results = stages.get("slat_ae", {}).get("results")
    if not results:
        raise WeightsError(f"{export}: its demo.json has no SLAT latent statistics (training.stages.slat_ae)",
                           "export the weights with `python -m engine.train`")
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    weights = {name: _float32(provide(name)) for names in (*DONE_STAGES.values(), STAGE2_NETWORKS) for name in names}
    # the source's own training record goes along (its stage 2 included), so the new export tells its history
    state = {"stages": {}, "from_export": {"folder": str(export), "identity": identity, "stages": stages,
                                           "argv": manifest.get("training", {}).get("argv"),
                                           "stage2": "restarted" if restart else "continued"}}
    for stage, names in DONE_STAGES.items():
        modules = {name: weights[name] for name in names}
        if stage == "slat_ae":
            modules["slat_encoder"] = encoder
        torch.save({"modules": modules, "ema": {}}, checkpoints / f"{stage}.pt")
        previous = stages.get(stage, {})
        state["stages"][stage] = {"done": True, "step": previous.get("step", 0), "elapsed": previous.get("elapsed", 0.0),
                                  "results": previous.get("results") or {}}  # fmt: skip
    if not restart:
        torch.save({name: weights[name] for name in STAGE2_NETWORKS}, checkpoints / "stage2.init.pt")
    stage2 = replace(config.stage2, share=1.0, lr=config.stage2.lr * (1.0 if restart else LR_FACTOR))
    state["config"] = config_to_dict(replace(config, stage2=stage2))
    (out / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def _slat_encoder(path: Path) -> dict[str, torch.Tensor]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise WeightsError(f"{path}: cannot be read as a checkpoint ({e})",
                           "pass a run's checkpoints/slat_ae.pt or a file with a 'slat_encoder' state dict") from None
    modules = saved.get("modules", saved) if isinstance(saved, dict) else {}
    if "slat_encoder" not in modules:
        raise WeightsError(f"{path}: holds no SLAT encoder weights",
                           "pass a run's checkpoints/slat_ae.pt or a file with a 'slat_encoder' state dict")
    return _float32(modules["slat_encoder"])


def _float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
