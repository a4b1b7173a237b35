"""Training the demo model end to end on synthetic data made on the fly:

    python -m engine.train --out DIR [--minutes 20] [--device cuda] [--resume]

Four stages, in order, each with its share of the time budget (`TrainConfig`):

1. `ss_vae`  — SS VAE: our encoder + the pipeline's SS decoder on 64³ solid occupancy (BCE + KL). At the end the
   latent is rescaled to unit standard deviation per channel (folded into both networks).
2. `slat_ae` — SLAT encoder + Gaussian and mesh decoders, supervised directly in 3-D: the mesh decoder's sdf at
   every FlexiCubes corner of its 4× finer grid against the analytic sdf of the shape, its corner colours against
   the surface colour, its deformation / weight channels towards 0; the Gaussians' centres towards the nearest
   surface point and their colours towards its colour (+ KL). At the end the latent's per-channel mean and std
   over many objects become the pipeline's `slat_mean` / `slat_std`.
3. `stage1`  — the stage-1 condition fuser (DINO trained from scratch, its two copies tied) and the MoT flow:
   flow matching on the shape latent of the object's occupancy and its four pose modalities in SSI units
   (`targets_latent.py`), the condition computed from exactly what preprocessing gives the pipeline
   (`model_inputs.py`), zeroed for 10 % of the objects (guidance). The d-embedder is made constant (d = 0 only).
4. `stage2`  — the stage-2 fuser (its DINO starts from stage 1's) and the SLAT flow on the normalised latents of
   the object's surface voxels; besides the velocity loss, the clean latent the velocity predicts
   (x1 = x_t + (1 − t)·v) goes through the frozen Gaussian decoder of stage `slat_ae`, and its colours are held
   to the voxels' true colour (`colour_weight`): without it the flow learnt geometry and left colours dull. Half
   the training times are drawn near the noise end (`early_share`), where only the picture tells the colours;
   the condition is zeroed for 10 % of the objects, as in stage 1 (the demo samples stage 2 with guidance 1).

Both flows keep an exponential moving average of their weights; the export uses it. Data: scenes of
`engine.train.dataset.SyntheticData` (train split), drawn in worker processes and rendered on the device; stage
`k` continues at the scene index where it stopped, so a resumed run sees new scenes.

Output folder: `state.json` (config, per-stage progress and results), `checkpoints/<stage>.pt` (weights,
optimiser, EMA, step, elapsed seconds, data position, RNG), `log.jsonl` (one line per log interval) and, when all
stages are done, `export/` (`export.py`). Checkpoints are written every `save_every` seconds and at the end of a
stage; `--resume` continues from them (a killed command loses at most `save_every` seconds). `--from-export`
starts a run whose stage 2 continues an exported model's (`finetune.py`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import random
import sys
import time
import typing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MODEL_NAMES
from ..errors import EngineError, InputError
from ..frames import opengl_to_p3d
from ..model_store import build
from ..models.condition import ConditionEmbedder
from ..models.gs_decoder import SH_C0
from ..models.slat_flow import SlatFlowModel, SparseResBlock
from ..models.ss_flow import MoTBlock, PoseLatent, SSFlow
from ..models.dino import DinoVisionTransformer
from ..models.point_embed import PointPatchEmbed
from ..mesh_extraction import CHANNELS
from ..sparse.tensor import SparseTensor
from . import objectives as obj
from .colour_readout import ColourReadout, slots_error
from .dataset import Batch, DataConfig, SyntheticData
from .demo import PRESETS, DemoModel
from .export import config_from_dict, config_to_dict, write_demo
from .finetune import seed_run
from .model_inputs import object_inputs
from .render import render
from .scenes import SceneBatch, SceneConfig
from .slat_encoder import SlatEncoder
from .ss_encoder import SSEncoder, normalize_latent_
from .targets import object_targets
from .targets_latent import (lattice_points, mesh_targets, object_fields, pose_latents, shape_latents,
                             surface_points, voxel_coords, voxel_inputs)

STAGES = ("ss_vae", "slat_ae", "stage1", "stage2")
POSE_WEIGHTS = {"shape": 1.0, "6drotation_normalized": 1.0, "translation": 1.0, "scale": 1.0,
                "translation_scale": 0.1}  # fmt: skip


@dataclass(frozen=True)
class StageSettings:
    share: float  # of the run's minutes
    objects: int  # objects per step
    lr: float  # peak learning rate (AdamW); linear warm-up, then cosine to 10 % over the stage's time
    warmup: int = 100  # steps
    reuse: int = 1  # optimiser steps per generated batch (new noise and times each step)
    condition_dropout: float = 0.0  # share of objects trained without condition (classifier-free guidance)
    # learning rate of the stage's condition fuser relative to the rest (stage 2's image branch starts from stage 1's,
    # which carries little colour: a linear probe reads an object's colour from its tokens to 0.151 (stage 1's) and
    # 0.072 (after stage 2's 420 s), against 0.007 from the brightest pixel)
    condition_lr_scale: float = 1.0
    # weight of the condition tokens' colour readout (`colour_readout.py`; stages 1 and 2; 0: none): a direct colour
    # signal for the fuser (stage 1's is where stage 2's image branch starts)
    colour_readout: float = 0.0
    steps: int | None = None  # finish after this many steps instead of at the time budget (CPU tests)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "demo"  # demo.PRESETS key
    minutes: float = 20.0  # the whole run's budget (data generation included)
    seed: int = 0  # data and initialisation
    image_size: int = 160  # rendered views, px (the bundled example is 160 x 160)
    march_steps: int = 64  # sphere-tracing steps of the renderer
    ss_vae: StageSettings = StageSettings(share=0.04, objects=32, lr=1e-3, warmup=30)
    slat_ae: StageSettings = StageSettings(share=0.16, objects=16, lr=1e-3, warmup=30)
    # Both flows train their condition fuser with the colour readout too: colour error 0.110 -> 0.073 on the
    # 200-image evaluation (session 8; a stage 2 retrained with it on older first stages reached only 0.095-0.102:
    # stage 1's readout, where stage 2's image branch starts, carries most of the gain)
    stage1: StageSettings = StageSettings(share=0.45, objects=96, lr=4e-4, warmup=100, reuse=2, condition_dropout=0.1,
                                          colour_readout=1.0)  # fmt: skip
    # Stage 2 drops the condition too: guided sampling (strength 1 in the demo preset) gives colour error 0.110
    # against 0.130 without guidance (the 200-image evaluation, session 6)
    stage2: StageSettings = StageSettings(share=0.35, objects=24, lr=5e-4, warmup=30, reuse=2, condition_dropout=0.1,
                                          colour_readout=1.0)  # fmt: skip
    kl_ss: float = 1e-3  # KL weight of the SS VAE (per latent element)
    kl_slat: float = 1e-4  # KL weight of the SLAT autoencoder
    # Stage 2: weight of the decoded-colour loss (the frozen Gaussian decoder's colours of the predicted clean
    # latent against the voxels' true colour). The velocity loss alone let the flow ignore the picture's colours.
    colour_weight: float = 1.0
    # Stage 2: share of the training times redrawn from [0, early_bound) (`objectives.with_early_times`). With the
    # sampler's uniform times the flow read colours from x_t alone (from t = 0.1 on they are already there) and
    # ignored the picture: at t = 0 its colours were the same with the real, a zero or another object's condition.
    early_share: float = 0.5
    early_bound: float = 0.1
    # Share of training objects with two colours (the held-out set keeps SceneConfig's). The demo model paints a
    # two-colour object in one of its colours (session 5): a knob for making the boundary worth learning.
    two_colour_share: float = SceneConfig.two_colour_probability
    min_pixels: int = 24  # objects with fewer visible pixels are not trained on
    ae_max_voxels: int = 1024  # the autoencoder sees at most this many neighbouring voxels of an object per step
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    save_every: float = 60.0  # seconds between checkpoints
    log_every: float = 15.0  # seconds between log lines
    workers: int = 6  # processes drawing scenes (0: in the main process)
    stats_objects: int = 128  # objects over which latent statistics are taken
    scene_count: int | None = None  # train on scenes 0 … n−1 over and over (overfitting checks); None: new scenes

    def stage(self, name: str) -> StageSettings:
        return getattr(self, name)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "demo": TrainConfig(),
    # CPU tests: toy networks on a 16³ grid, 32 px views, a few objects per step.
    "micro": TrainConfig(
        model="micro", minutes=1.0, image_size=32, march_steps=24,
        ss_vae=StageSettings(0.25, 4, 3e-3, warmup=2, steps=40), slat_ae=StageSettings(0.25, 2, 1e-2, warmup=2, steps=8),
        stage1=StageSettings(0.25, 4, 3e-3, warmup=2, steps=60, condition_dropout=0.1), stage2=StageSettings(0.25, 3, 1e-2, warmup=2, steps=8),
        ae_max_voxels=128, workers=0, stats_objects=4, save_every=1e9, log_every=1e9, min_pixels=4, scene_count=2,
    ),
}  # fmt: skip


def with_settings(config: TrainConfig, settings: list[str]) -> TrainConfig:
    """`config` with fields set from "KEY=VALUE" strings (the command line's --set): KEY is a TrainConfig field
    (`early_share`) or a stage's setting (`stage2.lr`); VALUE is parsed as the field's type ("none" for an
    optional one). Raises InputError naming the key for anything else."""
    for item in settings:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or not text.strip() or len(path) > 2:
            raise InputError(f"--set {item!r} is not KEY=VALUE", "e.g. --set early_share=0.8 or --set stage2.lr=1e-3")
        if len(path) == 2 and path[0] not in STAGES:
            raise InputError(f"--set {item!r}: {path[0]!r} is not a stage", f"use one of {', '.join(STAGES)}")
        owner = config if len(path) == 1 else config.stage(path[0])
        hints = typing.get_type_hints(type(owner))
        name = path[-1]
        if name not in hints or dataclasses.is_dataclass(hints[name]):
            names = sorted(k for k, v in hints.items() if not dataclasses.is_dataclass(v))
            raise InputError(f"--set {item!r}: {type(owner).__name__} has no setting {name!r}",
                             f"choose from {', '.join(names)}")
        changed = replace(owner, **{name: _setting(hints[name], text.strip(), item)})
        config = changed if len(path) == 1 else replace(config, **{path[0]: changed})
    return config


def _setting(hint: Any, text: str, item: str) -> Any:
    options = typing.get_args(hint) or (hint,)  # `int | None` -> (int, NoneType)
    if type(None) in options and text.lower() == "none":
        return None
    kind = next(t for t in options if t is not type(None))
    try:
        if kind is bool:
            return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        return kind(text)
    except (KeyError, ValueError):
        raise InputError(f"--set {item!r}: {text!r} is not a {kind.__name__}", "give a value of that type") from None


# ---- the run ---------------------------------------------------------------------------------------------------


def train(
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    device: str = "auto",
    resume: bool = False,
    stages: tuple[str, ...] = STAGES,
    max_steps: int | None = None,
    export: str | Path | None = None,
    log: Any = print,
) -> Path | None:
    """Train `stages` (in STAGES order) into folder `out`; export when every stage is done. Returns the export
    folder or None. `max_steps` caps each stage's steps (smoke runs); `resume` continues a run in `out`."""
    run = Run(Path(out), config, device, resume, log)
    for name in STAGES:
        if name in stages:
            run.train_stage(name, max_steps)
    if all(run.state["stages"].get(s, {}).get("done") for s in STAGES):
        return run.export(Path(export) if export is not None else run.out / "export")
    return None


class Run:
    """A training run in a folder: config, progress, checkpoints, logs; builds each stage's networks."""

    def __init__(self, out: Path, config: TrainConfig, device: str, resume: bool, log: Any = print):
        self.out = out
        self.log = log
        self.device = _device(device)
        state_path = out / "state.json"
        if state_path.is_file():
            if not resume:
                raise InputError(f"{out} already holds a training run", "pass --resume to continue it, or another --out")
            saved = json.loads(state_path.read_text())
            # The saved settings win, except the run-time ones: the time budget and the worker count.
            config = replace(config_from_dict(TrainConfig, saved["config"]), minutes=config.minutes,
                             workers=config.workers)  # fmt: skip
            self.state = saved
        else:
            self.state = {"stages": {}}
        self.config = config
        self.state["config"] = config_to_dict(config)
        self.model: DemoModel = PRESETS[config.model]
        self.data = SyntheticData(config.seed, "train", DataConfig(
            height=config.image_size, width=config.image_size, resolution=self.model.resolution,
            max_steps=config.march_steps, scene=SceneConfig(two_colour_probability=config.two_colour_share)))  # fmt: skip
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._save_state()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            # cuDNN's attention builds a plan per new shape (~10 ms of CPU each); sparse batches change shape
            # every step, so use the flash / memory-efficient kernels.
            torch.backends.cuda.enable_cudnn_sdp(False)

    # ---- stages

    def train_stage(self, name: str, max_steps: int | None = None) -> None:
        progress = self.state["stages"].get(name, {})
        if progress.get("done"):
            self.log(f"[{name}] done already (step {progress['step']}, {progress['elapsed']:.0f} s)")
            return
        stage = STAGE_CLASSES[name](self)
        loop = Loop(self, stage, budget=self.config.stage(name).share * self.config.minutes * 60.0)
        loop.train(max_steps)

    def checkpoint_path(self, name: str) -> Path:
        return self.out / "checkpoints" / f"{name}.pt"

    def final_weights(self, name: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """The finished stage's weights per network (EMA ones where kept), or None if it has not finished."""
        path = self.checkpoint_path(name)
        if not (self.state["stages"].get(name, {}).get("done") and path.is_file()):
            return None
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        return {**ckpt["modules"], **ckpt.get("ema", {})}

    def initial_weights(self, name: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """Weights a stage starts from instead of its initialisation (`checkpoints/<name>.init.pt`), or None."""
        path = self.out / "checkpoints" / f"{name}.init.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def export(self, folder: Path) -> Path:
        weights = {}
        for stage in STAGES:
            weights.update(self.final_weights(stage) or {})
        stats = self.state["stages"]["slat_ae"]["results"]
        config = replace(self.model.pipeline, slat_mean=tuple(stats["slat_mean"]), slat_std=tuple(stats["slat_std"]))
        training = {
            "argv": list(sys.argv),
            "config": config_to_dict(self.config),
            "stages": self.state["stages"],
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else str(self.device),
            "torch": torch.__version__,
            **({"from_export": self.state["from_export"]} if "from_export" in self.state else {}),
        }
        write_demo(folder, config, {name: weights[name] for name in MODEL_NAMES}, training)
        self.log(f"exported the demo weights to {folder}")
        return folder

    # ---- data

    def scenes_per_step(self, objects: int) -> int:
        return max(1, math.ceil(objects / 2))

    def stream(self, scenes: int, start: int, rendered: bool) -> Iterator[Batch]:
        """Consecutive batches of `scenes` scenes from index `start`, on the device, with targets (and views)."""
        return _scene_batches(self.data, scenes, start, self.device, self.config.workers, rendered,
                              self.config.scene_count)  # fmt: skip

    def objects(self, batch: Batch, limit: int, rendered: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(scene, object) indices of up to `limit` usable objects of a batch: valid and, when rendered, with at
        least `min_pixels` visible pixels."""
        ok = batch.targets.valid
        if rendered:
            ok = ok & (batch.masks.flatten(2).sum(-1) >= self.config.min_pixels)
        b, k = torch.nonzero(ok, as_tuple=True)
        return b[:limit], k[:limit]

    def _save_state(self) -> None:
        tmp = self.out / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        os.replace(tmp, self.out / "state.json")


# ---- stages -----------------------------------------------------------------------------------------------------


class Stage:
    """One stage: its trainable networks, how a data batch becomes model inputs, and its losses."""

    name = ""
    rendered = True  # needs rendered views (else shapes only)
    uses_ema = False

    def __init__(self, run: Run):
        self.run = run
        self.cfg = run.config
        self.settings = run.config.stage(self.name)
        self.model = run.model
        self.device = run.device
        self.modules: dict[str, nn.Module] = {}

    def prepare(self, batch: Batch) -> dict[str, Any] | None:
        """A data batch -> model inputs and targets (None when it holds no usable object)."""
        raise NotImplementedError

    def losses(self, inputs: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"loss": the total to minimise, other terms for the log}."""
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """Work after the last step (latent statistics); returns results kept in state.json."""
        return {}

    def param_groups(self, condition_lr_scale: float = 1.0) -> list[dict[str, Any]]:
        """The optimiser's groups: one, or with a scale other than 1 (and a condition fuser in the stage) the fuser's
        parameters apart, with their `lr_scale`."""
        params = self.parameters()
        ids = {id(p) for name, m in self.modules.items() if name.endswith("_condition") for p in m.parameters()}
        if condition_lr_scale == 1.0 or not ids:
            return [{"params": params}]
        return [{"params": [p for p in params if id(p) not in ids]},
                {"params": [p for p in params if id(p) in ids], "lr_scale": condition_lr_scale}]  # fmt: skip

    def parameters(self) -> list[nn.Parameter]:
        seen, params = set(), []
        for module in self.modules.values():
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _objects(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        b, k = self.run.objects(batch, self.settings.objects, self.rendered)
        return None if b.numel() == 0 else (b, k)

    def _add_colour_readout(self, channels: int) -> None:
        if self.settings.colour_readout > 0:  # trained with the stage, never exported (not a pipeline network)
            generator = torch.Generator().manual_seed(self.cfg.seed + 7)
            self.modules["colour_readout"] = ColourReadout(channels, generator).to(self.device)

    def _with_colour_readout(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], tokens: torch.Tensor,
                             colours: torch.Tensor) -> torch.Tensor:
        """loss plus the weighted colour-readout error of the (undropped) condition tokens, when the stage has one."""
        if "colour_readout" not in self.modules:
            return loss
        readout = slots_error(self.modules["colour_readout"](tokens), colours)
        terms["readout"] = readout.detach()
        return loss + self.settings.colour_readout * readout


class SSVAEStage(Stage):
    name = "ss_vae"
    rendered = False

    def __init__(self, run: Run):
        super().__init__(run)
        self.modules = {
            "ss_encoder": SSEncoder(self.model.ss_encoder).to(self.device),
            "ss_decoder": build("ss_decoder", self.model.pipeline).to(self.device),
        }
        init_for_training(self.modules, self.cfg.seed)

    def prepare(self, batch: Batch) -> dict[str, Any] | None:
        picked = self._objects(batch)
        if picked is None:
            return None
        return {"solid": batch.targets.solid[picked]}

    def losses(self, inputs, generator=None):
        solid = inputs["solid"]
        encoder, decoder = self.modules["ss_encoder"], self.modules["ss_decoder"]
        with self.autocast():
            mean, logvar = encoder(solid[:, None].float())
            z = obj.gaussian_sample(mean.float(), logvar.float(), generator)
            logits = decoder(z).float()[:, 0]  # (Q, R, R, R)
        target = solid.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        kl = obj.kl_divergence(mean, logvar)
        with torch.no_grad():
            pred = logits > 0
            iou = ((pred & solid).flatten(1).sum(1) / (pred | solid).flatten(1).sum(1).clamp_min(1)).mean()
        return {"loss": bce + self.cfg.kl_ss * kl, "bce": bce.detach(), "kl": kl.detach(), "iou": iou}

    @torch.no_grad()
    def finish(self) -> dict[str, Any]:
        encoder, decoder = self.modules["ss_encoder"], self.modules["ss_decoder"]
        means = []
        for solid in _stat_batches(self, "solid"):
            with self.autocast():
                means.append(encoder(solid[:, None].float())[0].float().transpose(0, 1).flatten(1))  # (C, ·)
        std = torch.cat(means, dim=1).std(dim=1).clamp_min(1e-3)
        normalize_latent_(encoder, decoder, std)
        return {"latent_std_before": std.tolist()}


class SlatAEStage(Stage):
    name = "slat_ae"
    rendered = False

    def __init__(self, run: Run):
        super().__init__(run)
        self.modules = {
            "slat_encoder": SlatEncoder(self.model.slat_encoder).to(self.device),
            "gs_decoder": build("gs_decoder", self.model.pipeline).to(self.device),
            "mesh_decoder": build("mesh_decoder", self.model.pipeline).to(self.device),
        }
        init_for_training(self.modules, self.cfg.seed + 1)

    def prepare(self, batch: Batch) -> dict[str, Any] | None:
        picked = self._objects(batch)
        if picked is None:
            return None
        b, k = picked
        coords = voxel_coords(batch.targets.occupancy[b, k])  # (N, 4) [object, x, y, z]
        coords = _crop_objects(coords, self.cfg.ae_max_voxels, self.cfg.seed + batch.indices[0])
        return _voxel_fields(batch.scenes, b, k, coords, self.model.resolution)

    def losses(self, inputs, generator=None):
        r = self.model.resolution
        fine_r = 4 * r
        coords = inputs["coords"]
        encoder = self.modules["slat_encoder"]
        with self.autocast():
            mean, logvar = encoder(SparseTensor(coords, inputs["features"]))
            z = SparseTensor(coords, obj.gaussian_sample(mean, logvar, generator))
            mesh = self.modules["mesh_decoder"](z)
            gaussians = self.modules["gs_decoder"].decode(z)
        out: dict[str, torch.Tensor] = {}

        # Mesh decoder: sdf at every corner of the fine voxels (fine-voxel units), corner colours, the rest -> 0.
        feats = mesh.feats.float()
        sdf_target, colour_target = mesh_targets(mesh.coords, coords, inputs["sdf"], inputs["albedo"], r)
        s0, s1 = CHANNELS["sdf"]
        out["mesh_sdf"] = F.smooth_l1_loss(feats[:, s0:s1] * fine_r, sdf_target * fine_r)
        c0, c1 = CHANNELS["color"]
        corner = feats[:, c0:c1].reshape(-1, 8, 6)
        out["mesh_colour"] = F.binary_cross_entropy_with_logits(corner[..., :3], colour_target)
        out["mesh_colour_l1"] = (torch.sigmoid(corner[..., :3].detach()) - colour_target).abs().mean()  # log only
        out["mesh_rest"] = feats[:, s1:c0].square().mean() + corner[..., 3:].square().mean()

        # Gaussian decoder: centres onto the surface (voxel units), their colour, sizes and opacity near the bias.
        g = self.modules["gs_decoder"].cfg.num_gaussians
        xyz = gaussians.xyz.reshape(-1, g, 3) - 0.5  # (N, G, 3) object frame
        surface, colour = surface_points(inputs["scenes"], inputs["scene"], inputs["object"], xyz.detach())
        out["gs_position"] = ((xyz - surface) * r).square().sum(-1).mean()
        rgb = SH_C0 * gaussians.features_dc.reshape(-1, g, 3) + 0.5
        out["gs_colour"] = (rgb - colour).square().mean()
        out["gs_rest"] = gaussians.scaling.square().mean() + gaussians.rotation.square().mean() + (
            gaussians.activated_opacity() - 0.9
        ).square().mean()  # fmt: skip

        out["kl"] = obj.kl_divergence(mean, logvar)
        out["loss"] = (out["mesh_sdf"] + 6.0 * out["mesh_colour"] + 0.01 * out["mesh_rest"] + out["gs_position"]
                       + 2.0 * out["gs_colour"] + 0.1 * out["gs_rest"] + self.cfg.kl_slat * out["kl"])  # fmt: skip
        return {k: (v if k == "loss" else v.detach()) for k, v in out.items()}

    @torch.no_grad()
    def finish(self) -> dict[str, Any]:
        encoder = self.modules["slat_encoder"]
        means = []
        for fields in _stat_batches(self, "fields"):
            with self.autocast():
                means.append(encoder(SparseTensor(fields["coords"], fields["features"]))[0].float())
        latents = torch.cat(means)
        return {"slat_mean": latents.mean(0).tolist(), "slat_std": latents.std(0).clamp_min(1e-3).tolist()}


class Stage1(Stage):
    name = "stage1"
    uses_ema = True

    def __init__(self, run: Run):
        super().__init__(run)
        pipeline = self.model.pipeline
        self.modules = {
            "ss_condition": tie_dino(build("ss_condition", pipeline)).to(self.device),
            "ss_flow": build("ss_flow", pipeline).to(self.device),
        }
        init_for_training(self.modules, self.cfg.seed + 2)
        self._add_colour_readout(pipeline.ss_flow.cond_channels)
        self.encoder = SSEncoder(self.model.ss_encoder).to(self.device)
        vae = run.final_weights("ss_vae")
        if vae is not None:
            self.encoder.load_state_dict(vae["ss_encoder"])
        else:
            run.log("[stage1] no finished ss_vae stage: training against an untrained encoder (tests only)")
        self.encoder.eval().requires_grad_(False)
        self.rescale_t = pipeline.stage1.rescale_t

    def prepare(self, batch: Batch) -> dict[str, Any] | None:
        picked = self._objects(batch)
        if picked is None:
            return None
        b, k = picked
        inputs = _object_batch(batch, b, k, self.model.pipeline.preprocess)
        t = batch.targets
        x1 = pose_latents(t.rotation_matrix[b, k], t.translation[b, k], t.scale[b, k], inputs.pointmap_scale,
                          inputs.pointmap_shift)  # fmt: skip
        with self.autocast():
            x1["shape"] = shape_latents(self.encoder, t.solid[b, k])
        return {"condition": inputs.ss, "x1": {key: v.float() for key, v in x1.items()}, "colours": t.colours[b, k]}

    def losses(self, inputs, generator=None):
        x1 = inputs["x1"]
        q = x1["shape"].shape[0]
        x0 = obj.noise_like(x1, generator)
        t = obj.sample_t(q, self.rescale_t, generator, self.device)
        xt = obj.interpolate(x0, x1, t[:, None, None])
        with self.autocast():
            tokens = self.modules["ss_condition"](inputs["condition"])
            cond = obj.drop_condition(tokens, self.settings.condition_dropout, generator)
            v = self.modules["ss_flow"](xt, t * obj.TIME_SCALE, cond=cond, d=torch.zeros_like(t))
        loss, terms = obj.flow_loss(v, obj.velocity_target(x0, x1), POSE_WEIGHTS)
        loss = self._with_colour_readout(loss, terms, tokens, inputs["colours"])
        return {"loss": loss, **terms, "cond_rms": _rms(cond)}


class Stage2(Stage):
    name = "stage2"
    uses_ema = True

    def __init__(self, run: Run):
        super().__init__(run)
        pipeline = self.model.pipeline
        self.modules = {
            "slat_condition": tie_dino(build("slat_condition", pipeline)).to(self.device),
            "slat_flow": build("slat_flow", pipeline).to(self.device),
        }
        init_for_training(self.modules, self.cfg.seed + 3)
        self._add_colour_readout(pipeline.slat_flow.cond_channels)
        first = run.final_weights("stage1")
        if first is not None:  # the whole image/mask branch starts from stage 1's: DINO, projections, group rows
            self.modules["slat_condition"].load_state_dict(_image_branch(first["ss_condition"]))
        start = run.initial_weights(self.name)
        if start is not None:  # a run seeded from an export (`finetune.py`) continues its stage-2 networks
            for name, state in start.items():
                self.modules[name].load_state_dict(state)
        self.encoder = SlatEncoder(self.model.slat_encoder).to(self.device)
        ae = run.final_weights("slat_ae")
        results = run.state["stages"].get("slat_ae", {}).get("results", {})
        if ae is not None:
            self.encoder.load_state_dict(ae["slat_encoder"])
        else:
            run.log("[stage2] no finished slat_ae stage: training against an untrained encoder (tests only)")
        channels = self.model.slat_encoder.latent_channels
        self.mean = torch.tensor(results.get("slat_mean", [0.0] * channels), device=self.device)
        self.std = torch.tensor(results.get("slat_std", [1.0] * channels), device=self.device)
        self.encoder.eval().requires_grad_(False)
        # The colour loss decodes through stage slat_ae's Gaussian decoder, frozen (not a trained module here).
        self.gs_decoder = build("gs_decoder", pipeline).to(self.device)
        if ae is not None:
            self.gs_decoder.load_state_dict(ae["gs_decoder"])
        self.gs_decoder.eval().requires_grad_(False)
        self.rescale_t = pipeline.stage2.rescale_t

    def prepare(self, batch: Batch) -> dict[str, Any] | None:
        picked = self._objects(batch)
        if picked is None:
            return None
        b, k = picked
        inputs = _object_batch(batch, b, k, self.model.pipeline.preprocess)
        coords = voxel_coords(batch.targets.occupancy[b, k])
        fields = _voxel_fields(batch.scenes, b, k, coords, self.model.resolution)
        with torch.no_grad(), self.autocast():
            mean, _ = self.encoder(SparseTensor(coords, fields["features"]))
        return {"condition": inputs.slat, "coords": coords, "x1": (mean.float() - self.mean) / self.std,
                "albedo": fields["albedo"].mean(dim=1), "colours": batch.targets.colours[b, k]}  # fmt: skip

    def losses(self, inputs, generator=None):
        coords, x1 = inputs["coords"], inputs["x1"]
        q = inputs["condition"]["image"].shape[0]
        x0 = obj.noise_like(x1, generator)
        t = obj.sample_t(q, self.rescale_t, generator, self.device)
        t = obj.with_early_times(t, self.cfg.early_share, self.cfg.early_bound, generator)
        t_row = t[coords[:, 0].long()][:, None]  # (N, 1)
        xt = obj.interpolate(x0, x1, t_row)
        with self.autocast():
            tokens = self.modules["slat_condition"](inputs["condition"])
            cond = obj.drop_condition(tokens, self.settings.condition_dropout, generator)
            v = self.modules["slat_flow"](SparseTensor(coords, xt), t * obj.TIME_SCALE, cond=cond)
        loss, terms = obj.flow_loss(v.feats, obj.velocity_target(x0, x1))
        loss = self._with_colour_readout(loss, terms, tokens, inputs["colours"])
        if self.cfg.colour_weight > 0:  # the decoder's forward and backward cost a third of the step
            colour = self.decoded_colour_error(coords, xt + (1 - t_row) * v.feats.float(), inputs["albedo"])
            loss = loss + self.cfg.colour_weight * colour
            terms["colour"] = colour.detach()
        return {"loss": loss, **terms, "cond_rms": _rms(cond)}

    def decoded_colour_error(self, coords: torch.Tensor, x1: torch.Tensor, albedo: torch.Tensor) -> torch.Tensor:
        """Mean absolute RGB error of the Gaussian decoder's colours for the normalised latent x1 (N, C) against
        the voxels' true colours albedo (N, 3); differentiable in x1, the decoder frozen."""
        latent = x1 * self.std + self.mean
        with self.autocast():
            gaussians = self.gs_decoder.decode(SparseTensor(coords, latent))
        g = self.gs_decoder.cfg.num_gaussians
        rgb = SH_C0 * gaussians.features_dc.float().reshape(-1, g, 3) + 0.5  # (N, G, 3)
        return (rgb.mean(dim=1) - albedo).abs().mean()


STAGE_CLASSES: dict[str, type[Stage]] = {"ss_vae": SSVAEStage, "slat_ae": SlatAEStage, "stage1": Stage1,
                                         "stage2": Stage2}  # fmt: skip


# ---- the training loop ------------------------------------------------------------------------------------------


class Loop:
    """Steps of one stage until its time budget (or a step cap) is used, with checkpoints and logs."""

    def __init__(self, run: Run, stage: Stage, budget: float):
        self.run, self.stage, self.budget = run, stage, budget
        self.settings = stage.settings
        self.progress = run.state["stages"].setdefault(stage.name, {"done": False, "step": 0, "elapsed": 0.0})
        fused = {"fused": True} if run.device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(stage.param_groups(self.settings.condition_lr_scale), lr=self.settings.lr,
                                           betas=(0.9, 0.99), weight_decay=0.01, **fused)  # fmt: skip
        self.ema = {name: copy.deepcopy(m).requires_grad_(False) for name, m in stage.modules.items()} \
            if stage.uses_ema else {}  # fmt: skip
        self.generator = torch.Generator(run.device).manual_seed(run.config.seed * 100 + STAGES.index(stage.name))
        self.position = 0  # next scene index of the data stream
        self._load()

    def train(self, max_steps: int | None = None) -> None:
        stage, progress = self.stage, self.progress
        for m in stage.modules.values():
            m.train()
        scenes = self.run.scenes_per_step(self.settings.objects)
        stream = self.run.stream(scenes, self.position, stage.rendered)
        log_t = save_t = time.perf_counter()
        window: dict[str, float] = {}
        steps_in_window = objects_in_window = 0
        first_step = progress["step"]
        inputs = None
        timing = os.environ.get("THREEDFY_TRAIN_TIMING") == "1"  # synchronise to split data and step time
        data_seconds = 0.0
        self.run.log(f"[{stage.name}] from step {progress['step']}, {progress['elapsed']:.0f} of {self.budget:.0f} s")
        try:
            while not self.finished() and (max_steps is None or progress["step"] - first_step < max_steps):
                start = time.perf_counter()
                if inputs is None or progress["step"] % self.settings.reuse == 0:
                    inputs = None
                    while inputs is None:
                        batch = next(stream)
                        self.position = batch.indices[-1] + 1
                        inputs = stage.prepare(batch)
                    if timing:
                        _sync(self.run.device)
                        data_seconds += time.perf_counter() - start
                losses = self.step(inputs)
                if timing:
                    _sync(self.run.device)
                progress["step"] += 1
                steps_in_window += 1
                objects_in_window += _count(inputs)
                for key, value in losses.items():
                    window[key] = window.get(key, 0.0) + value
                now = time.perf_counter()
                progress["elapsed"] += now - start
                if now - log_t >= self.run.config.log_every:
                    if timing:
                        window["data_share"] = steps_in_window * data_seconds / (now - log_t)
                    self._log(window, steps_in_window, objects_in_window, now - log_t)
                    window, steps_in_window, objects_in_window, log_t, data_seconds = {}, 0, 0, now, 0.0
                if now - save_t >= self.run.config.save_every:
                    self.save()
                    save_t = time.perf_counter()
        finally:
            stream.close()
        if steps_in_window:
            self._log(window, steps_in_window, objects_in_window, time.perf_counter() - log_t)
        if self.finished():
            for m in stage.modules.values():
                m.eval()
            started = time.perf_counter()
            progress["results"] = stage.finish()
            progress["elapsed"] += time.perf_counter() - started
            progress["done"] = True
            self.run.log(f"[{stage.name}] done: step {progress['step']}, {progress['elapsed']:.0f} s "
                         f"{progress['results'] or ''}")  # fmt: skip
        self.save()

    def step(self, inputs: dict[str, Any]) -> dict[str, float]:
        stage = self.stage
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        losses = stage.losses(inputs, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(stage.parameters(), self.run.config.grad_clip)
        self.optimizer.step()
        if self.ema:
            self._update_ema()
        return {**{k: v.detach().float() for k, v in losses.items()}, "grad_norm": grad_norm.detach().float()}

    def finished(self) -> bool:
        if self.settings.steps is not None:
            return self.progress["step"] >= self.settings.steps
        return self.progress["elapsed"] >= self.budget

    def learning_rate(self) -> float:
        step = self.progress["step"]
        if self.settings.steps is not None:
            fraction = min(1.0, step / self.settings.steps)
        else:
            fraction = min(1.0, self.progress["elapsed"] / max(self.budget, 1e-9))
        warm = min(1.0, (step + 1) / max(1, self.settings.warmup))
        return self.settings.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))

    @torch.no_grad()
    def _update_ema(self) -> None:
        n = self.progress["step"]
        decay = min(self.run.config.ema_decay, (1 + n) / (10 + n))
        for name, module in self.stage.modules.items():
            ema = self.ema[name]
            params = [p for p in module.parameters()]
            shadow = [p for p in ema.parameters()]
            torch._foreach_lerp_(shadow, params, 1 - decay)
            for b_ema, b in zip(ema.buffers(), module.buffers()):
                b_ema.copy_(b)

    def save(self) -> None:
        stage = self.stage
        ckpt = {
            "modules": {name: m.state_dict() for name, m in stage.modules.items()},
            "ema": {name: m.state_dict() for name, m in self.ema.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "position": self.position,
            "progress": dict(self.progress),
        }
        path = self.run.checkpoint_path(stage.name)
        tmp = path.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
        self.run._save_state()

    def _load(self) -> None:
        path = self.run.checkpoint_path(self.stage.name)
        if not path.is_file():
            return
        ckpt = torch.load(path, map_location=self.run.device, weights_only=False)
        for name, module in self.stage.modules.items():
            module.load_state_dict(ckpt["modules"][name])
        for name, module in self.ema.items():
            module.load_state_dict(ckpt["ema"][name])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.generator.set_state(ckpt["generator"].cpu())
        self.position = ckpt["position"]
        self.progress.update(ckpt["progress"])

    def _log(self, window: dict[str, Any], steps: int, objects: int, seconds: float) -> None:
        values = {k: float(v) / steps for k, v in window.items()}
        line = {"stage": self.stage.name, "step": self.progress["step"], "elapsed": round(self.progress["elapsed"], 1),
                "lr": self.learning_rate(), "objects_per_s": objects / max(seconds, 1e-9), **values}  # fmt: skip
        if self.run.device.type == "cuda":
            line["gpu_gib"] = torch.cuda.max_memory_allocated(self.run.device) / 2**30
        with open(self.run.out / "log.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        terms = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        memory = f" {line['gpu_gib']:.1f} GiB" if "gpu_gib" in line else ""
        self.run.log(f"[{self.stage.name}] step {line['step']} {line['elapsed']:.0f}/{self.budget:.0f}s "
                     f"{terms} lr {line['lr']:.2e} {line['objects_per_s']:.0f} obj/s{memory}")  # fmt: skip


# ---- networks ---------------------------------------------------------------------------------------------------


def tie_dino(embedder: ConditionEmbedder) -> ConditionEmbedder:
    """Make the fuser's second DINO (masks) the same module as the first (images), as the identical upstream copies."""
    embedder.module_list[1] = embedder.module_list[0]
    return embedder


@torch.no_grad()
def init_for_training(modules: dict[str, nn.Module], seed: int) -> None:
    """Initial weights for training from scratch (the models' own init is for loading checkpoints):
    linear layers Xavier-uniform with zero bias; tokens and learnt position tables N(0, 0.02²); the flows'
    adaLN modulations, output layers, the res blocks' second convs and the SLAT flow's cross-attention outputs
    zero (every block starts as identity);
    the decoders' output rows for deformation / FlexiCubes weights / Gaussian offsets zero; the stage-1
    d-embedder's first layer zero and frozen, so the d-embedding is a constant (d = 0 only)."""
    torch.manual_seed(seed)
    for module in modules.values():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in module.modules():
            if isinstance(m, DinoVisionTransformer):
                for p in (m.cls_token, m.pos_embed, m.register_tokens, m.mask_token):
                    nn.init.normal_(p, std=0.02)
            elif isinstance(m, PointPatchEmbed):
                for p in (m.invalid_xyz_token, m.pos_embed, m.pos_embed_window, m.cls_token):
                    nn.init.normal_(p, std=0.02)
            elif isinstance(m, ConditionEmbedder):
                nn.init.normal_(m.idx_emb, std=0.02)
            elif isinstance(m, PoseLatent):
                nn.init.normal_(m.pos_emb, std=0.02)
                nn.init.zeros_(m.out_layer.weight)
                nn.init.zeros_(m.out_layer.bias)
            elif isinstance(m, MoTBlock):
                nn.init.zeros_(m.adaLN_modulation[1].weight)
                nn.init.zeros_(m.adaLN_modulation[1].bias)
            elif isinstance(m, SparseResBlock):
                nn.init.zeros_(m.conv2.conv.weight)
                nn.init.zeros_(m.conv2.conv.bias)
        if isinstance(module, SSFlow):
            nn.init.zeros_(module.latent_mapping["shape"].out_layer.weight)
            nn.init.zeros_(module.latent_mapping["shape"].out_layer.bias)
            for embedder in (module.t_embedder, module.d_embedder):
                nn.init.normal_(embedder.mlp[0].weight, std=0.02)
                nn.init.normal_(embedder.mlp[2].weight, std=0.02)
            nn.init.zeros_(module.d_embedder.mlp[0].weight)
            module.d_embedder.mlp[0].weight.requires_grad_(False)
        if isinstance(module, SlatFlowModel):
            for block in module.blocks:
                nn.init.zeros_(block.adaLN_modulation[1].weight)
                nn.init.zeros_(block.adaLN_modulation[1].bias)
                # The cross-attention is the block's one un-gated branch: a random output layer adds noise from
                # the condition, and training first removes it by shrinking the condition tokens (rms 0.27 ->
                # 0.05 in 90 s), after which the flow never learns to read colours from the picture.
                nn.init.zeros_(block.cross_attn.to_out.weight)
            nn.init.zeros_(module.out_layer.weight)
            nn.init.zeros_(module.out_layer.bias)
            nn.init.normal_(module.t_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(module.t_embedder.mlp[2].weight, std=0.02)
        name = type(module).__name__
        if name == "MeshDecoder":
            s1, c0 = CHANNELS["sdf"][1], CHANNELS["color"][0]
            module.out_layer.weight[s1:c0] = 0.0
            module.out_layer.weight[:s1] *= 0.1
        if name == "GaussianDecoder":
            g = module.cfg.num_gaussians
            module.out_layer.weight[: 3 * g] = 0.0


# ---- data helpers -----------------------------------------------------------------------------------------------


def _scene_batches(data: SyntheticData, scenes: int, start: int, device: torch.device, workers: int,
                   rendered: bool, cycle: int | None = None) -> Iterator[Batch]:  # fmt: skip
    """Endless consecutive batches (scene indices start, start + 1, ..., modulo `cycle` if given): scenes drawn
    in `workers` processes, collated, rendered (if asked) and given 64³ targets on `device`. A batch's `indices`
    count on without the modulo (they are the stream position)."""
    cfg = data.config

    def finish(indices: list[int], drawn) -> Batch:
        batch = SceneBatch.collate(drawn, device=device)
        views = render(batch, cfg.height, cfg.width, max_steps=cfg.max_steps) if rendered else None
        return Batch(indices, batch, views, object_targets(batch, cfg.resolution))

    def spans() -> Iterator[list[int]]:
        i = start
        while True:
            yield list(range(i, i + scenes))
            i += scenes

    def scene_ids(indices: list[int]) -> list[int]:
        return [i % cycle for i in indices] if cycle else indices

    if workers <= 0:
        for indices in spans():
            yield finish(indices, [data.scene(i) for i in scene_ids(indices)])
        return
    # spawn, not fork: this process already holds a CUDA context and threads (the workers only run numpy).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        for indices in spans():
            pending.append((indices, pool.submit(_draw, data, scene_ids(indices))))
            if len(pending) <= 2 * workers:
                continue
            done, future = pending.popleft()
            yield finish(done, future.result())


def _draw(data: SyntheticData, indices: list[int]):
    return [data.scene(i) for i in indices]


def _rms(x: torch.Tensor) -> torch.Tensor:
    """For the log: a condition whose tokens shrink towards zero is one the flow has stopped using."""
    return x.detach().float().square().mean().sqrt()


def _image_branch(ss_condition: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stage-1 condition weights the stage-2 embedder shares in shape: both DINOs (tied: one copy), their
    projections and the group rows. A freshly initialised projection ahead of a cross-attention that does not
    yet use it shrinks towards zero (tokens of rms 0.02 after 20 minutes, the flow ignoring the picture's
    colours); stage 1's projection carries information from the first step."""
    dino = {k[len("module_list.0."):]: v for k, v in ss_condition.items() if k.startswith("module_list.0.")}
    shared = {k: v for k, v in ss_condition.items()
              if k == "idx_emb" or k.startswith(("projection_nets.0.", "projection_nets.1."))}  # fmt: skip
    for i in (0, 1):
        shared.update({f"module_list.{i}.{k}": v for k, v in dino.items()})
    return shared


def _object_batch(batch: Batch, b: torch.Tensor, k: torch.Tensor, preprocess):
    rgb = batch.views.image.permute(0, 3, 1, 2)  # (B, 3, H, W)
    points = opengl_to_p3d(batch.views.pointmap).permute(0, 3, 1, 2)  # (B, 3, H, W) PyTorch3D frame
    return object_inputs(rgb, points, batch.masks[b, k].float(), b, preprocess)


def _voxel_fields(scenes: SceneBatch, b: torch.Tensor, k: torch.Tensor, coords: torch.Tensor,
                  resolution: int) -> dict[str, Any]:  # fmt: skip
    """The SLAT encoder's inputs and the decoders' fields on voxels `coords` (N, 4) of objects (b, k)."""
    row = coords[:, 0].long()
    points = lattice_points(coords[:, 1:], resolution)  # (N, 125, 3)
    sdf, albedo = object_fields(scenes, b[row], k[row], points)
    return {"coords": coords, "features": voxel_inputs(sdf, albedo, resolution), "sdf": sdf, "albedo": albedo,
            "scenes": scenes, "scene": b[row], "object": k[row]}  # fmt: skip


def _crop_objects(coords: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Keep at most `limit` voxels per object: those nearest (Chebyshev) to a random voxel of the object."""
    rng = random.Random(seed)
    keep = []
    objects = coords[:, 0]
    for q in torch.unique(objects).tolist():
        rows = torch.nonzero(objects == q).squeeze(1)
        if rows.numel() > limit:
            xyz = coords[rows, 1:].long()
            centre = xyz[rng.randrange(rows.numel())]
            distance = (xyz - centre).abs().amax(dim=1) * rows.numel() + torch.arange(rows.numel(), device=xyz.device)
            rows = rows[torch.topk(distance, limit, largest=False).indices.sort().values]
        keep.append(rows)
    return coords[torch.cat(keep)]


def _stat_batches(stage: Stage, what: str) -> Iterator[Any]:
    """Batches of fresh objects (the validation split) for latent statistics: solids or voxel fields."""
    run = stage.run
    data = SyntheticData(run.config.seed, "val", run.data.config)
    counted = 0
    start = 0
    while counted < run.config.stats_objects:
        batch = next(_scene_batches(data, run.scenes_per_step(8), start, run.device, 0, rendered=False))
        start += run.scenes_per_step(8)
        b, k = torch.nonzero(batch.targets.valid, as_tuple=True)
        counted += b.numel()
        if what == "solid":
            yield batch.targets.solid[b, k]
        else:
            coords = voxel_coords(batch.targets.occupancy[b, k])
            yield _voxel_fields(batch.scenes, b, k, coords, run.model.resolution)


def _count(inputs: dict[str, Any]) -> int:
    for key in ("solid", "condition"):
        if key in inputs:
            value = inputs[key]
            return int((value["image"] if isinstance(value, dict) else value).shape[0])
    return int(inputs["coords"][:, 0].max()) + 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu")
    return torch.device(device)


# ---- command line -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.train", description="Train the demo model.")
    parser.add_argument("--out", required=True, type=Path, help="run folder (state, checkpoints, log, export)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget of the whole run (default 20)")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--preset", default="demo", choices=sorted(TRAIN_PRESETS), help="sizes and settings")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on each stage's steps (smoke runs)")
    parser.add_argument("--workers", type=int, default=None, help="scene-drawing processes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--export", type=Path, default=None, help="export folder (default OUT/export)")
    parser.add_argument("--from-export", type=Path, default=None,
                        help="train stage 2 again from these demo weights (see finetune.py); --minutes is its budget")
    parser.add_argument("--slat-encoder", type=Path, default=None,
                        help="with --from-export: the SLAT encoder (a run's checkpoints/slat_ae.pt)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting of a new run, e.g. early_share=0.8 or stage2.lr=1e-3 "
                             "(repeatable; a resumed run keeps its saved settings)")  # fmt: skip
    parser.add_argument("--restart-stage2", action="store_true",
                        help="with --from-export: train stage 2 afresh on the export's first stages, as a whole run "
                             "would, instead of continuing the export's")  # fmt: skip
    args = parser.parse_args(argv)

    config = TRAIN_PRESETS[args.preset]
    overrides = {k: v for k, v in (("minutes", args.minutes), ("workers", args.workers), ("seed", args.seed))
                 if v is not None}  # fmt: skip
    config = replace(config, **overrides)
    if args.set and args.resume:
        parser.error("--set applies to new runs: a resumed run keeps the settings saved in its state.json")
    try:
        config = with_settings(config, args.set)
    except EngineError as e:
        parser.error(str(e))
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    if args.restart_stage2 and args.from_export is None:
        parser.error("--restart-stage2 goes with --from-export")
    if args.from_export is not None:
        if args.slat_encoder is None or args.resume:
            parser.error("--from-export needs --slat-encoder and a new --out (not --resume)")
        try:
            seed_run(args.out, config, args.from_export, args.slat_encoder, restart=args.restart_stage2)
        except EngineError as e:
            parser.exit(2, f"error: {e}\n")
        args.resume = True
    if args.resume and args.minutes is None and (args.out / "state.json").is_file():
        saved = json.loads((args.out / "state.json").read_text())
        config = replace(config, minutes=saved["config"]["minutes"])
    try:
        folder = train(args.out, config, args.device, args.resume, stages, args.max_steps, args.export,
                       log=lambda s: print(s, flush=True))  # fmt: skip
    except EngineError as e:
        parser.exit(2, f"error: {e}\n")
    if folder is not None:
        print(f"weights: {folder}", flush=True)
