import math

import pytest
import torch

from engine.pose import Pose, decode_pose, matrix_to_quaternion, quaternion_to_matrix, rotation_6d_to_matrix
from tests.engine.parity import assert_close, load_case


@pytest.mark.parametrize("sample", ["s0", "s1", "s2", "s3"])
def test_decodes_the_official_pose_and_places_points(sample):
    case = load_case("pose_decoder")
    raw = {k: case.inputs[f"{sample}.raw.{k}"] for k in ("6drotation_normalized", "translation", "scale", "translation_scale")}
    pose = decode_pose(raw, case.inputs[f"{sample}.pointmap_scale"], case.inputs[f"{sample}.pointmap_shift"])
    out = case.outputs
    assert_close(pose.rotation, out[f"{sample}.rotation"][0], 1e-5, 1e-5, "rotation")
    assert_close(pose.translation, out[f"{sample}.translation"][0], 1e-5, 1e-5, "translation")
    assert_close(torch.full((3,), pose.scale), out[f"{sample}.scale"][0], 1e-5, 1e-5, "scale")
    assert_close(pose.rotation_matrix, out[f"{sample}.rotation_matrix_R"][0], 1e-5, 1e-5, "R")
    points = case.inputs["points_local"][0]
    assert_close(pose.transform_points(points), out[f"{sample}.points_cam"][0], 1e-5, 1e-5, "points_cam")
    # The same placement as the official 4x4 row-vector transform.
    m = out[f"{sample}.transform_4x4_rowvec"][0]
    homog = torch.cat([points, torch.ones(len(points), 1)], 1) @ m
    assert_close(pose.transform_points(points), homog[:, :3], 1e-5, 1e-5, "rowvec")


def test_object_to_camera_is_the_model_pose_seen_in_the_opengl_frame():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, generator=g)
    pose = Pose(matrix_to_quaternion(quaternion_to_matrix(q)), torch.randn(3, generator=g), 1.7)
    points = torch.rand(50, 3, generator=g) - 0.5
    p_p3d = pose.transform_points(points).double()
    m = pose.object_to_camera()
    p_gl = (torch.cat([points.double(), torch.ones(50, 1, dtype=torch.float64)], 1) @ m.T)[:, :3]
    assert_close(p_gl, p_p3d * torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64), 1e-6, 1e-6, "opengl")
    rot = m[:3, :3] / 1.7
    assert_close(rot @ rot.T, torch.eye(3, dtype=torch.float64), 1e-6, 1e-6, "orthonormal")
    assert torch.det(rot) == pytest.approx(1.0, abs=1e-6)


def test_quaternion_round_trip_covers_every_largest_component():
    g = torch.Generator().manual_seed(11)
    q = torch.nn.functional.normalize(torch.randn(4000, 4, generator=g), dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    back = matrix_to_quaternion(quaternion_to_matrix(q))
    assert_close(back, q, 1e-5, 1e-5, "quaternion")


def test_rotation_6d_gives_a_proper_rotation():
    g = torch.Generator().manual_seed(5)
    r = rotation_6d_to_matrix(torch.randn(100, 6, generator=g))
    assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(100, 3, 3), 1e-5, 1e-5, "orthonormal")
    assert torch.allclose(torch.linalg.det(r), torch.ones(100), atol=1e-5)
