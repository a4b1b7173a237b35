"""The pointmap of a photo, estimated with MoGe v1 when no pointmap is given (as the official pipeline does).

Weights: a MoGe `model.pt` file, a folder holding one, `hf:REPO[@REV]` (default `hf:Ruicheng/moge-vitl`, public),
or `random` (seeded random weights of a preset, for smoke runs). Loaded on first use, freed with `release()`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError, WeightsError
from .moge.infer import infer, sam3d_pointmap
from .moge.model import PRESETS, MoGeModel
from .moge.weights import load_moge
from .random_weights import randomize_

DEFAULT_WEIGHTS = "hf:Ruicheng/moge-vitl"


class DepthEstimator:
    def __init__(self, weights: str = DEFAULT_WEIGHTS, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, preset: str = "official", seed: int = 0, token: str | None = None):
        self.weights = weights
        self.device = torch.device(device)
        self.dtype = dtype
        self.preset = preset
        self.seed = seed
        self.token = token
        self._model: MoGeModel | None = None

    def __call__(self, rgb: np.ndarray, fov_x: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """rgb (H, W, 3) float in [0, 1] -> (points (H, W, 3) float32 in the PyTorch3D camera frame, NaN where
        MoGe has no depth; intrinsics (3, 3) in pixels). `fov_x` (degrees), when the camera is known, fixes
        MoGe's horizontal field of view instead of letting it recover the focal from its points.

        Invalid points are NaN, not +inf: upstream converts MoGe's OpenCV points to the PyTorch3D frame with a
        homogeneous transform, which turns any point with an infinite coordinate into NaN; the object-centric
        normalisation then skips them (it would count +inf).
        """
        model = self._load()
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(self.device, self.dtype)
        out = sam3d_pointmap(infer(model, image, fov_x=fov_x, force_projection=False))
        points = out.points_p3d.float().cpu().numpy()
        points[~np.isfinite(points).all(axis=-1)] = np.nan
        if not np.isfinite(points).all(axis=-1).any():
            raise InputError("the depth estimator found no depth in this image; give a pointmap instead")
        fx, fy, cx, cy = out.intrinsics_px.reshape(4).double().tolist()
        return points, np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)

    def release(self) -> None:
        self._model = None

    def _load(self) -> MoGeModel:
        if self._model is None:
            if self.weights == "random":
                model = randomize_(MoGeModel(PRESETS[self.preset]), self.seed)
                model.reset_buffers()
                self._model = model.to(self.device, self.dtype).eval().requires_grad_(False)
            else:
                self._model = load_moge(self._checkpoint_path(), device=self.device, dtype=self.dtype)
        return self._model

    def _checkpoint_path(self) -> Path:
        if self.weights.startswith("hf:"):
            from .weights.hub import download_file

            repo, _, revision = self.weights[3:].partition("@")
            return download_file(repo, "model.pt", revision=revision or None, token=self.token)
        path = Path(self.weights)
        if path.is_dir():
            path = path / "model.pt"
        if not path.is_file():
            raise WeightsError(f"MoGe weights not found at {path}", hint="give model.pt, its folder, or hf:REPO")
        return path
