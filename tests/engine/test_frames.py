import numpy as np
import torch

from engine.frames import opencv_to_p3d, opengl_to_p3d, p3d_to_opencv, p3d_to_opengl


def test_each_conversion_round_trips_and_keeps_invalid_points():
    g = np.random.default_rng(4)
    points = g.normal(size=(5, 7, 3)).astype(np.float32)
    points[0, 0] = np.inf
    points[1, 1, 2] = np.nan
    for there, back in ((opengl_to_p3d, p3d_to_opengl), (opencv_to_p3d, p3d_to_opencv)):
        np.testing.assert_array_equal(back(there(points)), points)
    assert np.isinf(opengl_to_p3d(points)[0, 0]).all()


def test_a_point_in_front_of_the_camera_stays_in_front_in_every_frame():
    p_gl = torch.tensor([[0.3, 0.2, -2.0]])  # right, up, in front (OpenGL looks down -Z)
    p_p3d = opengl_to_p3d(p_gl)
    assert p_p3d[0, 2] > 0 and p_p3d[0, 0] < 0 and p_p3d[0, 1] > 0  # +Z forward, +X left, +Y up
    p_cv = p3d_to_opencv(p_p3d)
    assert p_cv[0, 2] > 0 and p_cv[0, 0] > 0 and p_cv[0, 1] < 0  # +X right, +Y down
    assert p_gl.dtype == torch.float32 and p_gl[0, 0] == 0.3  # inputs are not modified


def test_the_gltf_turn_is_a_proper_rotation_that_puts_object_up_on_gltf_up():
    from engine.frames import gltf_to_object, object_to_gltf

    up = np.array([[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(object_to_gltf(up), [[0.0, 1.0, 0.0]])
    m = object_to_gltf(np.eye(3))
    assert np.linalg.det(m) == 1.0
    points = np.random.default_rng(1).normal(size=(10, 3))
    np.testing.assert_array_equal(gltf_to_object(object_to_gltf(points)), points)
