"""The chain of frames end to end: object-local mesh -> pose (model frame) -> object_to_camera (OpenGL) ->
pixels through the intrinsics, compared with the mask the same object makes in the model's own frame."""
from __future__ import annotations

import numpy as np
import torch

from engine.frames import opengl_to_p3d, p3d_to_opencv
from engine.intrinsics import from_pointmap
from engine.pose import Pose, matrix_to_quaternion, quaternion_to_matrix

W, H = 160, 120
K = np.array([[150.0, 0, 83.0], [0, 140.0, 57.0], [0, 0, 1]])


def _box_surface(n: int = 60) -> np.ndarray:
    """Dense points on the faces of an uneven box inside [-0.5, 0.5]^3 (object-local, z-up)."""
    half = np.array([0.45, 0.2, 0.3])
    g = np.linspace(-1, 1, n)
    a, b = np.meshgrid(g, g, indexing="ij")
    faces = []
    for axis in range(3):
        for sign in (-1, 1):
            p = np.zeros((n * n, 3))
            others = [i for i in range(3) if i != axis]
            p[:, axis] = sign
            p[:, others[0]], p[:, others[1]] = a.ravel(), b.ravel()
            faces.append(p * half)
    return np.concatenate(faces)


def _mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    m = np.zeros((H, W), bool)
    ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    m[v[ok].astype(int), u[ok].astype(int)] = True
    return m


def test_a_posed_mesh_projected_through_object_to_camera_lands_on_its_mask():
    g = torch.Generator().manual_seed(21)
    q = matrix_to_quaternion(quaternion_to_matrix(torch.randn(4, generator=g)))
    pose = Pose(q, torch.tensor([0.15, -0.1, 3.0]), 1.3)  # model frame: +Z forward, so 3 m in front
    local = _box_surface()

    # The mask as the model sees it: PyTorch3D frame -> OpenCV pixels.
    p_cv = p3d_to_opencv(pose.transform_points(torch.from_numpy(local).float()).double().numpy())
    truth = _mask(K[0, 0] * p_cv[:, 0] / p_cv[:, 2] + K[0, 2], K[1, 1] * p_cv[:, 1] / p_cv[:, 2] + K[1, 2])
    assert truth.sum() > 500

    # What Blender does with the engine's answer: object_to_camera in the OpenGL camera frame (looking down -Z).
    p_gl = (np.c_[local, np.ones(len(local))] @ pose.object_to_camera().numpy().T)[:, :3]
    assert (p_gl[:, 2] < 0).all()
    u = K[0, 2] + K[0, 0] * p_gl[:, 0] / -p_gl[:, 2]
    v = K[1, 2] - K[1, 1] * p_gl[:, 1] / -p_gl[:, 2]
    placed = _mask(u, v)
    iou = (placed & truth).sum() / (placed | truth).sum()
    assert iou > 0.99, iou


def test_a_pointmap_in_the_opengl_frame_projects_onto_its_own_pixels():
    rng = np.random.default_rng(2)
    v, u = np.mgrid[0:H, 0:W]
    depth = 2.0 + rng.random((H, W))
    x = (u + 0.5 - K[0, 2]) / K[0, 0] * depth
    y = (v + 0.5 - K[1, 2]) / K[1, 1] * depth
    pointmap_gl = np.stack([x, -y, -depth], axis=-1)  # right, up, in front = -Z
    pointmap_gl[:5] = np.nan  # rows without depth
    points_p3d = opengl_to_p3d(pointmap_gl)
    np.testing.assert_allclose(from_pointmap(points_p3d), K, rtol=1e-6, atol=1e-6)
