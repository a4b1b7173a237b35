"""Image + object masks -> posed meshes and Gaussians: the SAM 3D Objects pipeline, end to end.

The pipeline owns the policy: validation, noise, the sampling loops, stage order, device and memory, progress and
cancel. The networks (`models/`) only compute. A run is stage-major: every object goes through stage 1 before
any goes through stage 2, so each network is loaded once per run (and freed after its stage unless kept loaded).

    pipe = Pipeline.from_source("hf:facebook/sam-3d-objects")        # or a folder, or "random"
    result = pipe.reconstruct(image, [mask_cup, mask_plate], seed=42)
    result.objects[0].mesh, result.objects[0].object_to_camera

Frames: see `pose.py` and `frames.py`. Pointmaps given to `reconstruct` are in the Blender/OpenGL camera frame.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import frames, intrinsics as intrinsics_lib, noise as noise_lib
from .assets import Mesh
from .config import PipelineConfig, samplers_for
from .cuda_graphs import CudaGraphBackend, GraphedVelocity, KeptFunction, KeptVelocity
from .depth import DEFAULT_WEIGHTS as DEFAULT_DEPTH_WEIGHTS
from .depth import DepthEstimator
from .errors import Cancelled, EngineError, InputError, OutOfMemoryError
from .images import to_mask, to_rgb_float
from .layout_fit import fit_layout, voxel_points
from .mesh_extraction import SUBDIVISION, decoded_to_mesh
from .model_store import ModelStore, Provider
from .models.attention import attention_kernels
from .models.slat_flow import SlatVelocity
from .occupancy import cap_voxel_count, coords_from_logits, keep_surface
from .pose import Pose, decode_pose
from .postprocess import PostprocessOptions, make_artist_mesh
from .postprocess.collapse import RoundGraphs
from .preprocess import ObjectInputs, full_image, preprocess_object
from .results import ObjectResult, ReconstructionResult
from .sampling import SamplerSettings, VelocityFn, sample
from .sparse.tensor import SparseTensor

ProgressFn = Callable[[str, float], None]  # (stage name, fraction of that stage done in [0, 1])
OUTPUTS = ("mesh", "gaussians")
# Below this many sampler steps a stage-1 run's own graphs do not repay their warm-up and capture calls (H200,
# session 9: 4 steps 0.16-0.23 s with graphs, 0.16 s without). With the networks kept loaded its graphs are kept
# instead (`_geometry_steps`). Stage 2 always runs eagerly: its graphs serve one object only (its voxels set the
# shapes), and their captures cost about what their replays save (H200, 8 steps 0.42-0.45 s against 0.36 s;
# 25 steps 1.095 s against 1.052 s, session 10; session 11, one signature per run, captures without settling the
# device, runs alternating in one process: fast 0.281 s against 0.255 s, default 1.069 s against 1.042 s).
# Session 13, one warm-up call: graphs won only on a slow host (fast 0.375 -> 0.312 s, default 1.214 -> 1.125 s)
# and lost on a quick one (fast 0.248 -> 0.276 s, default 1.024 -> 1.078 s), their pools adding ~0.04 GiB of peak
# per object.
GRAPH_MIN_STEPS = 12
# Attention kernels the flow transformers prefer on a GPU (`attention_kernels`; empty: PyTorch's default order).
FLOW_ATTENTION_KERNELS: tuple[str, ...] = ()
STAGES = ("pointmap", "condition", "geometry", "voxels", "texture", "gaussians", "mesh", "postprocess")  # in order
# ("layout", when the layout is refined, runs between "voxels" and "texture")


@contextmanager
def _with_condition(steps: AbstractContextManager[VelocityFn], kv: Any, guided: Any) -> Iterator[tuple]:
    with steps as step:
        yield step, kv, guided


@dataclass
class _Object:
    """One object's state between stages of a run."""

    index: int
    inputs: ObjectInputs
    generator: torch.Generator
    noise: dict | None
    raw: dict[str, torch.Tensor]
    pose: Pose | None = None
    coords: torch.Tensor | None = None  # (N, 4) int32 voxels for stage 2
    slat: torch.Tensor | None = None  # (N, 8) de-normalised structured latent


class Pipeline:
    def __init__(
        self,
        config: PipelineConfig,
        provider: Provider,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        keep_loaded: bool = True,
        weights_id: str = "",
        depth_weights: str = DEFAULT_DEPTH_WEIGHTS,
        cuda_graphs: bool = True,
    ):
        self.config = config
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.models = ModelStore(config, provider, self.device, self.dtype, keep_loaded, weights_id or "the weights")
        self.flow_attention = FLOW_ATTENTION_KERNELS if self.device.type == "cuda" else ()
        # Sampler steps replayed from CUDA graphs (`cuda_graphs.py`): CUDA only; turned off to compare with eager runs.
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        # Stage 1's graphs kept between objects and runs while its flow stays loaded (`_geometry_steps`).
        self._kept_geometry: KeptVelocity | None = None
        self._kept_embedders: dict[str, KeptFunction] = {}  # the condition embedders' graphs, likewise (`_embed`)
        self._kept_decimation: RoundGraphs | None = None  # the decimation's round graphs, likewise (`_postprocess`)
        self.models.on_release.append(self._forget_graphs)
        self.models.on_release.append(self._forget_decimation_graphs)
        self.weights_id = weights_id  # where the weights came from (stored on Blender objects)
        # MoGe for photos without a pointmap; its own preset follows the pipeline's when its weights are random.
        moge_preset = "tiny" if config.preprocess.size < 518 else "official"
        self.depth = DepthEstimator(depth_weights, self.device, self.dtype, preset=moge_preset)

    @classmethod
    def from_source(
        cls,
        weights: str,
        preset_name: str = "official",
        device: str = "auto",
        dtype: str = "auto",
        keep_loaded: bool = True,
        seed: int = 0,
        depth_weights: str = DEFAULT_DEPTH_WEIGHTS,
        cuda_graphs: bool = True,
        **source_options,
    ) -> Pipeline:
        """weights: a folder in the official release layout, `hf:REPO[@REV]`, or `random` (seeded by `seed`).
        depth_weights: MoGe weights for photos given without a pointmap (see `depth.py`); cuda_graphs: replay the
        flows' sampler steps from CUDA graphs (ignored off CUDA)."""
        from .weights.sources import open_source

        device_t = _resolve_device(device)
        dtype_t = _resolve_dtype(dtype, device_t)
        # Converted weights are cached in the compute precision (float32 runs keep the files' own dtypes).
        source_options.setdefault("cache_dtype", None if dtype_t == torch.float32 else dtype_t)
        config, provider, weights_id = open_source(weights, preset_name, seed=seed, **source_options)
        return cls(config, provider, device_t, dtype_t, keep_loaded, weights_id, depth_weights, cuda_graphs)

    # ---- the run ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def reconstruct(
        self,
        image: np.ndarray,
        masks: Sequence[np.ndarray],
        pointmap: np.ndarray | None = None,
        intrinsics: np.ndarray | None = None,
        seed: int = 0,
        quality: str = "default",
        noise: Sequence[dict] | None = None,
        outputs: Sequence[str] = OUTPUTS,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        postprocess: PostprocessOptions | None = PostprocessOptions(),
        refine_layout: bool | None = None,
        seal_mesh: bool | None = None,
    ) -> ReconstructionResult:
        """Reconstruct every masked object of one picture.

        image: (H, W, 3|4) or (H, W) uint8/uint16/float; masks: one (H, W) array per object (bool, uint8 or float;
        soft edges are kept); pointmap: (H, W, 3) float points in the Blender/OpenGL camera frame, non-finite where
        unknown (None: estimated from the image); intrinsics: 3x3 or (fx, fy, cx, cy) in pixels (None: inferred
        from the pointmap; given without a pointmap, the depth estimate keeps their field of view); noise: per object a dict {"stage1": {modality: tensor}, "stage2": tensor} to inject
        instead of drawing from `seed`; outputs: a subset of ("mesh", "gaussians"); progress(stage, fraction);
        cancel: an Event checked between sampler steps and stages (raises `Cancelled`); postprocess: the options
        that turn each raw decoder mesh into a clean, decimated, UV-unwrapped, textured one (`postprocess/`), or
        None for the raw mesh (vertex colours). The raw mesh is kept in `ObjectResult.raw_mesh` either way.
        refine_layout: fit each pose's translation and scale to its mask and the pointmap before stage 2
        (`layout_fit.py`; None: the configuration's `refine_layout`). seal_mesh: close each mesh where the object
        meets the grid's sides and over the pruned interior (`mesh_extraction.py`); False: the official extraction
        (None: the configuration's `seal_mesh`).
        """
        stage1, stage2 = samplers_for(self.config, quality)
        outputs = tuple(outputs)
        if not outputs or set(outputs) - set(OUTPUTS):
            raise InputError(f"outputs must be a non-empty subset of {OUTPUTS}, got {outputs}")
        rgb, mask_list, points_p3d, k = self._validate(image, masks, pointmap, intrinsics, noise)
        run = _Run(progress, cancel)
        try:
            with run.stage("pointmap"):
                if points_p3d is None:  # with intrinsics given, MoGe keeps their field of view and we keep them
                    points_p3d, k_estimated = self._estimate_pointmap(rgb, k)
                    k = k if k is not None else k_estimated
                    source = "estimated"
                else:
                    source = "given"
                    k = k if k is not None else intrinsics_lib.from_pointmap(points_p3d)
            objects = self._prepare(rgb, mask_list, points_p3d, seed, noise, run)
            self._stage1(objects, stage1, run)
            self._voxels(objects, run)
            if self.config.refine_layout if refine_layout is None else refine_layout:
                self._refine_layout(objects, mask_list, points_p3d, k, run)
            self._stage2(objects, stage2, run)
            seal = self.config.seal_mesh if seal_mesh is None else seal_mesh
            results = self._decode(objects, outputs, run, seal)
            if postprocess is not None and "mesh" in outputs:
                self._postprocess(results, postprocess, run)
        except torch.OutOfMemoryError:
            self.models.release()
            self._forget_decimation_graphs()
            raise OutOfMemoryError(
                f"the {self.device} device ran out of memory",
                hint="use quality 'fast', fewer objects per run, unload other models, or run on the CPU",
            ) from None
        finally:
            if not self.models.keep_loaded:
                self.models.release()
                self.depth.release()
        h, w = rgb.shape[:2]
        return ReconstructionResult(results, k, (w, h), source, seed, quality, run.timings)

    # ---- stages -------------------------------------------------------------------------------------------------

    def _validate(self, image, masks, pointmap, intrinsics, noise):
        rgb = to_rgb_float(image)
        h, w = rgb.shape[:2]
        if len(masks) == 0:
            raise InputError("no mask given; mark at least one object")
        mask_list = [to_mask(m, (h, w), name=f"mask {i + 1}") for i, m in enumerate(masks)]
        points_p3d = None
        if pointmap is not None:
            pointmap = np.asarray(pointmap)
            if pointmap.shape != (h, w, 3):
                raise InputError(f"pointmap has shape {pointmap.shape}; expected ({h}, {w}, 3) for this image")
            if not np.isfinite(pointmap).all(axis=-1).any():
                raise InputError("the pointmap has no finite point; give one with depth, or none to estimate it")
            points_p3d = frames.opengl_to_p3d(pointmap.astype(np.float32))
        k = intrinsics_lib.check(intrinsics, w, h) if intrinsics is not None else None
        if noise is not None and len(noise) != len(mask_list):
            raise InputError(f"noise is given for {len(noise)} objects but there are {len(mask_list)} masks")
        return rgb, mask_list, points_p3d, k

    def _estimate_pointmap(self, rgb: np.ndarray, k: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        fov_x = None if k is None else math.degrees(2.0 * math.atan(rgb.shape[1] / (2.0 * float(k[0, 0]))))
        try:
            return self.depth(rgb, fov_x)
        finally:
            if not self.models.keep_loaded:
                self.depth.release()

    def _prepare(self, rgb, masks, points_p3d, seed, noise, run: _Run) -> list[_Object]:
        rgb_t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (3, H, W)
        points_t = torch.from_numpy(np.ascontiguousarray(points_p3d)).permute(2, 0, 1).float()  # (3, H, W)
        rgb_full = full_image(rgb_t, self.config.preprocess)  # shared by every object
        objects = []
        for i, mask in enumerate(masks):
            try:
                inputs = preprocess_object(rgb_t, torch.from_numpy(mask), points_t, self.config.preprocess, rgb_full)
            except InputError as exc:
                raise InputError(f"mask {i + 1}: {exc.message}", exc.hint) from None
            generator = torch.Generator(self.device).manual_seed(seed)
            objects.append(_Object(i, inputs, generator, None if noise is None else noise[i], raw={}))
        return objects

    def _stage1(self, objects: list[_Object], settings: SamplerSettings, run: _Run) -> None:
        """Condition tokens, then the geometry flow (shape latent + pose) for every object."""
        cfg = self.config
        with run.stage("condition"):
            conds = self._condition("ss_condition", [o.inputs.ss for o in objects], run)
            for obj, cond in zip(objects, conds):
                obj.raw["cond_ss"] = cond.float().cpu()

        with run.stage("geometry"):
            flow = self.models.get("ss_flow")
            shapes = noise_lib.stage1_shapes(cfg.ss_flow.resolution, cfg.ss_flow.shape_channels)
            for n, (obj, cond) in enumerate(zip(objects, conds)):
                x0 = (
                    noise_lib.check_stage1(obj.noise["stage1"], shapes)
                    if obj.noise is not None
                    else noise_lib.draw_stage1(shapes, obj.generator, self.device)
                )
                x0 = {k: v.to(self.device) for k, v in x0.items()}
                x1 = self.sample_geometry(flow, cond, x0, settings, run.steps("geometry", n, len(objects)),
                                          run.cancelled)
                obj.raw.update({f"stage1.{k}": v.float().cpu() for k, v in x1.items()})
            self.models.done_with("ss_flow")

    def _voxels(self, objects: list[_Object], run: _Run) -> None:
        """Shape latent -> occupancy -> surface voxels (capped) and the decoded pose."""
        cfg = self.config
        with run.stage("voxels"):
            decoder = self.models.get("ss_decoder")
            for obj in objects:
                shape = obj.raw["stage1.shape"].to(self.device, self.dtype)
                logits = decoder(shape).float()  # (1, 1, 64, 64, 64)
                coords = coords_from_logits(logits)
                obj.raw["ss_logits"] = logits.cpu()
                obj.raw["coords_original"] = coords.cpu()
                if cfg.prune_interior:
                    coords = keep_surface(coords)
                coords, factor = cap_voxel_count(coords, generator=obj.generator, max_coords=cfg.max_voxels)
                if coords.shape[0] == 0:
                    raise EngineError(
                        f"mask {obj.index + 1}: the model found no solid shape for this object",
                        hint="try another seed, a cleaner mask, or the official weights",
                    )
                obj.coords = coords
                obj.raw["coords"] = coords.cpu()
                pose_raw = {k: obj.raw[f"stage1.{k}"] for k in ("6drotation_normalized", "translation", "scale")}
                obj.pose = decode_pose(pose_raw, obj.inputs.pointmap_scale, obj.inputs.pointmap_shift, factor)
                run.check()
            self.models.done_with("ss_decoder")

    def _refine_layout(self, objects: list[_Object], masks: list[np.ndarray], points_p3d: np.ndarray, k: np.ndarray,
                       run: _Run) -> None:
        """Fit each pose to its mask and the pointmap; other objects' masks may hide it, so they are left out of its
        comparison. raw["layout.pose_model"]: the model's pose (w, x, y, z, tx, ty, tz, scale); raw["layout.fit"]:
        silhouette IoU before and after, and the depth ratio applied (NaN: not measured)."""
        with run.stage("layout"):
            taken = [m > 0.5 for m in masks]
            for n, obj in enumerate(objects):
                others = [t for i, t in enumerate(taken) if i != obj.index]
                ignore = np.logical_or.reduce(others) & ~taken[obj.index] if others else None
                side = obj.raw["ss_logits"].shape[-1]  # occupancy grid side (64)
                fit = fit_layout(voxel_points(obj.coords.cpu(), side), obj.pose, masks[obj.index], points_p3d, k,
                                 1.0 / side, ignore)  # fmt: skip
                p = obj.pose
                obj.raw["layout.pose_model"] = torch.cat([p.rotation.float(), p.translation.float(),
                                                          torch.tensor([p.scale])])  # fmt: skip
                obj.raw["layout.fit"] = torch.tensor([fit.iou_before, fit.iou_after, fit.depth_ratio])
                obj.pose = fit.pose
                run.report("layout", (n + 1) / len(objects))
                run.check()

    def _stage2(self, objects: list[_Object], settings: SamplerSettings, run: _Run) -> None:
        """Stage-2 condition tokens and the structured-latent flow on each object's voxels."""
        cfg = self.config
        with run.stage("condition"):
            conds = self._condition("slat_condition", [o.inputs.slat for o in objects], run)
            for obj, cond in zip(objects, conds):
                obj.raw["cond_slat"] = cond.float().cpu()

        with run.stage("texture"):
            flow = self.models.get("slat_flow")
            channels = cfg.slat_flow.in_channels
            mean = torch.tensor(cfg.slat_mean, device=self.device)
            std = torch.tensor(cfg.slat_std, device=self.device)
            for n, (obj, cond) in enumerate(zip(objects, conds)):
                count = obj.coords.shape[0]
                x0 = (
                    noise_lib.check_stage2(obj.noise["stage2"], count, channels).to(self.device)
                    if obj.noise is not None
                    else noise_lib.draw_stage2(count, channels, obj.generator, self.device)
                )
                x1 = self.sample_texture(flow, cond, obj.coords, x0, settings, run.steps("texture", n, len(objects)),
                                         run.cancelled)
                obj.raw["stage2.x1_normalized"] = x1.float().cpu()
                obj.slat = x1[0] * std + mean  # (N, 8)
                obj.raw["slat_feats"] = obj.slat.cpu()
            self.models.done_with("slat_flow")

    @torch.inference_mode()
    def sample_geometry(
        self,
        flow: nn.Module,
        cond: torch.Tensor,
        noise: dict[str, torch.Tensor],
        settings: SamplerSettings,
        progress: Callable[[int, int, object], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One object's stage-1 sampling run: the SS flow `flow` from `noise` {modality: (1, L, c)} float32 on the
        device, conditioned on `cond` (1, T, C) -> the latents {modality: (1, L, c)} float32."""

        def velocity(x, t, d, kv):
            v = flow({k: a.to(self.dtype) for k, a in x.items()}, t, d=d, cond_kv=kv)
            return {k: a.float() for k, a in v.items()}

        kv = flow.condition_kv(cond)  # guided calls: the same keys/values + the unconditional constants
        with attention_kernels(self.flow_attention), self._geometry_steps(flow, velocity, kv, settings.steps) as steps:
            step, kv, guided = steps
            return sample(step, noise, kv, settings, guided_condition=guided, progress=progress, cancelled=cancelled)

    @torch.inference_mode()
    def sample_texture(
        self,
        flow: nn.Module,
        cond: torch.Tensor,
        coords: torch.Tensor,
        noise: torch.Tensor,
        settings: SamplerSettings,
        progress: Callable[[int, int, object], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """One object's stage-2 sampling run: the SLAT flow `flow` on the voxels `coords` (N, 4) from `noise`
        (1, N, C) float32 on the device, conditioned on `cond` (1, T, C) -> the normalised latent (1, N, C) float32."""
        slat_velocity = SlatVelocity(flow, coords.to(self.device))  # caches the voxel maps for the whole run

        def velocity(x, t, d, kv):
            return slat_velocity(x.to(self.dtype), t, d, kv).float()

        kv = flow.condition_kv(cond)  # guided calls: the same keys/values + the unconditional constants
        guided = flow.guided_kv(kv) if settings.cfg_strength != 0 else None  # (the fast preset never guides)
        with attention_kernels(self.flow_attention):  # eagerly: see GRAPH_MIN_STEPS
            return sample(velocity, noise, kv, settings, guided_condition=guided, progress=progress,
                          cancelled=cancelled)

    def _geometry_steps(self, flow: nn.Module, velocity: VelocityFn, kv: Any,
                        steps: int) -> AbstractContextManager[tuple[VelocityFn, Any, Any]]:
        """Stage 1's (velocity, keys/values, guided keys/values). Its shapes never change, so with every network kept
        loaded its graphs are kept too (`KeptVelocity`): later objects and runs copy their keys/values into the kept
        ones and replay, whatever their step count. Otherwise as `_steps`."""
        if not (self.cuda_graphs and self.models.keep_loaded):
            return _with_condition(self._steps(velocity, steps), kv, flow.guided_kv(kv))
        kept = self._kept_geometry
        if kept is not None and kept.owner is flow and kept.accepts(kv):  # graphs read this flow's weights
            kept.load(kv)
        else:
            self._forget_graphs("ss_flow")
            kept = self._kept_geometry = KeptVelocity(velocity, CudaGraphBackend(self.device), kv, flow.guided_kv)
            kept.owner = flow
        return nullcontext((kept, kept.condition, kept.guided))

    def _forget_graphs(self, network: str) -> None:
        """Drop the graphs that read `network`'s weights (called before the model store frees it)."""
        if network == "ss_flow" and self._kept_geometry is not None:
            self._kept_geometry.release()
            self._kept_geometry = None
        if network in self._kept_embedders:
            self._kept_embedders.pop(network).release()

    def _steps(self, velocity: VelocityFn, steps: int) -> AbstractContextManager[VelocityFn]:
        """Stage 1's velocity when its graphs are not kept: replayed from CUDA graphs when on and the run has
        `GRAPH_MIN_STEPS` steps or more, freed when the run leaves (the graphs read this object's keys/values)."""
        if not self.cuda_graphs or steps < GRAPH_MIN_STEPS:
            return nullcontext(velocity)
        return GraphedVelocity(velocity, CudaGraphBackend(self.device))

    def _decode(self, objects: list[_Object], outputs: tuple[str, ...], run: _Run, seal: bool) -> list[ObjectResult]:
        results = [
            ObjectResult(o.index, o.pose, o.pose.object_to_camera().numpy(), raw=o.raw) for o in objects
        ]  # fmt: skip
        if "gaussians" in outputs:
            with run.stage("gaussians"):
                decoder = self.models.get("gs_decoder")
                for obj, res in zip(objects, results):
                    raw = decoder.decode(self._latent(obj))
                    res.gaussians = raw.to_assets()[0]
                    run.check()
                self.models.done_with("gs_decoder")
        if "mesh" in outputs:
            with run.stage("mesh"):
                decoder = self.models.get("mesh_decoder")
                resolution = self.config.mesh_decoder.trunk.resolution * SUBDIVISION
                for obj, res in zip(objects, results):
                    surface = decoded_to_mesh(decoder(self._latent(obj)), resolution,
                                              seal_block=SUBDIVISION if seal else None)  # fmt: skip
                    attrs = surface.vertex_attrs
                    if attrs is not None:
                        res.raw["mesh.vertex_attrs"] = attrs.float().cpu()
                    res.mesh = Mesh(
                        vertices=surface.vertices.float().cpu().numpy(),
                        faces=surface.faces.cpu().numpy().astype(np.int32),
                        vertex_colors=None if attrs is None else attrs[:, :3].float().cpu().numpy(),
                    )
                    run.check()
                self.models.done_with("mesh_decoder")
        return results

    def _postprocess(self, results: list[ObjectResult], options: PostprocessOptions, run: _Run) -> None:
        with run.stage("postprocess"):
            for n, res in enumerate(results):

                def report(_step: str, fraction: float, _n: int = n) -> None:
                    run.check()
                    run.report("postprocess", (_n + fraction) / len(results))

                res.raw_mesh = res.mesh
                try:
                    res.mesh = make_artist_mesh(res.raw_mesh, res.gaussians, options.faces, options.texture_size,
                                                options.cleanup, progress=report, device=self.device,
                                                round_graphs=self.decimation_graphs())
                except InputError as exc:
                    raise InputError(f"mask {res.mask_index + 1}: {exc.message}", exc.hint) from None

    def decimation_graphs(self) -> RoundGraphs | None:
        """The decimation's round graphs kept across objects and runs (their layouts recur: later objects replay
        what the first captured) while the networks stay loaded with CUDA graphs on; else None (each decimation
        makes and frees its own)."""
        if not (self.cuda_graphs and self.models.keep_loaded):
            return None
        if self._kept_decimation is not None and self._kept_decimation.repeat.fallback is not None:
            self._forget_decimation_graphs()  # a capture failed (out of memory?): try afresh with the next object
        if self._kept_decimation is None:
            self._kept_decimation = RoundGraphs(self.device)
        return self._kept_decimation

    def _forget_decimation_graphs(self, _network: str = "") -> None:
        """Free the decimation's kept graphs (when networks are freed: after an out-of-memory error, say)."""
        if self._kept_decimation is not None:
            self._kept_decimation.release()
            self._kept_decimation = None

    # ---- helpers ------------------------------------------------------------------------------------------------

    def _condition(self, name: str, inputs: list[dict[str, torch.Tensor]], run: _Run) -> list[torch.Tensor]:
        """Condition tokens (1, T, C) per object; the full picture is embedded once for all of them."""
        embedder = self.models.get(name)
        embed = self._embed(name, embedder)
        shared = embed({"rgb_image": self._to_device(inputs[0]["rgb_image"])})
        tokens = []
        for per_object in inputs:
            own = embed({k: self._to_device(v) for k, v in per_object.items() if k != "rgb_image"})
            tokens.append(embedder.fuse({**shared, **own}))
            run.check()
        self.models.done_with(name)
        return tokens

    def _embed(self, name: str, embedder: nn.Module) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """The embedder's `embed`; with every network kept loaded, replayed from graphs kept with it (its inputs have
        fixed shapes: ~10 ms less per call on an H200, session 10). Called once or twice per run, so one eager
        call per input layout before its capture (which comes in the next run: the whole pipeline has run once by then)."""
        if not (self.cuda_graphs and self.models.keep_loaded):
            return embedder.embed
        kept = self._kept_embedders.get(name)
        if kept is None or kept.owner is not embedder:  # graphs read this embedder's weights
            self._forget_graphs(name)
            kept = self._kept_embedders[name] = KeptFunction(embedder.embed, CudaGraphBackend(self.device),
                                                             warmup_calls=1)
            kept.owner = embedder
        return kept

    def _latent(self, obj: _Object) -> SparseTensor:
        return SparseTensor(obj.coords.to(self.device), obj.slat.to(self.dtype))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.dtype)


class _Run:
    """Progress, cancel and per-stage timings of one reconstruct call."""

    def __init__(self, progress: ProgressFn | None, cancel: threading.Event | None):
        self.progress = progress
        self.cancel = cancel
        self.timings: dict[str, float] = {}

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled("reconstruction cancelled")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.check()
        self.report(name, 0.0)
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.report(name, 1.0)

    def steps(self, name: str, index: int, count: int) -> Callable[[int, int, object], None]:
        """A sampler progress callback for object `index` of `count` within stage `name`."""

        def report(done: int, total: int, _state: object) -> None:
            self.report(name, (index + done / total) / count)

        return report

    def report(self, name: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(name, fraction)


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available", hint="use --device cpu")
    return device


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in names:
        raise InputError(f"unknown precision {dtype!r}; choose auto, float32, bfloat16 or float16")
    return names[dtype]
