"""Job folders (engine/jobs.py): inputs and results round-trip, and a result that fails a check is refused whole."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from engine import jobs
from engine.assets import Gaussians, Mesh
from tests.paths import REPO


def _object(rng, mask_index=0, textured=True, gaussians=False):
    vertices = rng.uniform(-0.5, 0.5, (30, 3)).astype(np.float32)
    faces = rng.integers(0, 30, (40, 3)).astype(np.int32)
    mesh = Mesh(vertices, faces, vertex_colors=rng.random((30, 3)).astype(np.float32),
                uvs=rng.random((30, 2)).astype(np.float32) if textured else None,
                texture=rng.integers(0, 255, (8, 12, 3), dtype=np.uint8) if textured else None)
    pose = np.eye(4)
    pose[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * 1.7
    pose[:3, 3] = rng.normal(size=3)
    splats = Gaussians(*(rng.random((5, n)).astype(np.float32) for n in (3, 3, 3, 4)),
                       rng.random(5).astype(np.float32)) if gaussians else None
    return SimpleNamespace(mesh=mesh, object_to_camera=pose, mask_index=mask_index, gaussians=splats)


def test_inputs_round_trip_with_their_settings(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (20, 30, 3), dtype=np.uint16)
    masks = [rng.random((20, 30)) > 0.5, rng.random((20, 30)).astype(np.float32)]
    pointmap = rng.normal(size=(20, 30, 3)).astype(np.float32)
    settings = jobs.JobSettings(weights="hf:facebook/sam-3d-objects@v1", preset="official", seed=9, quality="fast",
                                outputs=("mesh", "gaussians"), keep_loaded=False)
    jobs.write_job(tmp_path / "job", settings, image, masks, pointmap=pointmap, intrinsics=np.eye(3) * 40)
    job = jobs.read_job(tmp_path / "job")
    assert job.settings == settings
    np.testing.assert_array_equal(job.image, image)
    np.testing.assert_array_equal(job.masks[0], masks[0])
    np.testing.assert_array_equal(job.masks[1], masks[1])
    np.testing.assert_array_equal(job.pointmap, pointmap)
    np.testing.assert_array_equal(job.intrinsics, np.eye(3) * 40)


def test_a_job_folder_must_be_new_and_masks_must_match_the_image(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    jobs.write_job(tmp_path / "a", jobs.JobSettings(weights="random"), image, [np.ones((20, 30), bool)])
    with pytest.raises(jobs.JobFolderError, match="not empty"):
        jobs.write_job(tmp_path / "a", jobs.JobSettings(weights="random"), image, [np.ones((20, 30), bool)])
    with pytest.raises(jobs.JobFolderError, match=r"mask 0 is \(20, 20\), the image is \(20, 30\)"):
        jobs.write_job(tmp_path / "b", jobs.JobSettings(weights="random"), image, [np.ones((20, 20), bool)])


def test_results_round_trip_with_textures_and_gaussians(tmp_path):
    rng = np.random.default_rng(1)
    objects = [_object(rng, 1, textured=True, gaussians=True), _object(rng, 0, textured=False)]
    camera = {"intrinsics": [[80.0, 0, 32], [0, 80.0, 24], [0, 0, 1]], "image_size": [64, 48],
              "pointmap_source": "estimated"}
    jobs.write_result(tmp_path, objects, weights={"id": "repo", "revision": "abc"}, seconds=1.5, camera=camera)
    result = jobs.read_result(tmp_path, mask_count=2)
    assert result.weights == {"id": "repo", "revision": "abc"} and result.seconds == 1.5 and result.camera == camera
    for read, written in zip(result.objects, objects):
        assert read.mask_index == written.mask_index
        np.testing.assert_array_equal(read.mesh.vertices, written.mesh.vertices)
        np.testing.assert_array_equal(read.mesh.faces, written.mesh.faces)
        np.testing.assert_allclose(read.object_to_camera, written.object_to_camera)
    assert jobs.png_size(result.objects[0].texture_path) == (12, 8)
    assert result.objects[1].texture_path is None and result.objects[1].mesh.uvs is None
    np.testing.assert_array_equal(result.objects[0].gaussians.rotation, objects[0].gaussians.rotation)


def test_the_png_writer_makes_files_pillow_reads_back_exactly(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for channels in (3, 4):
        pixels = rng.integers(0, 255, (7, 13, channels), dtype=np.uint8)
        jobs.write_png(tmp_path / f"p{channels}.png", pixels)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"p{channels}.png")), pixels)


@pytest.mark.parametrize("damage, message", [
    (lambda d: np.save(d / "vertices.npy", np.full((30, 3), np.nan, np.float32)), "NaN or infinite"),
    (lambda d: np.save(d / "faces.npy", np.full((40, 3), 30, np.int32)), "refers to a vertex that does not exist"),
    (lambda d: np.save(d / "uvs.npy", np.zeros((29, 2), np.float32)), "has 29 rows, expected 30"),
    (lambda d: (d / "uvs.npy").unlink(), "a texture without UVs"),
    (lambda d: (d / "texture.png").write_bytes(b"GIF89a"), "is not a PNG file"),
    (lambda d: np.save(d / "object_to_camera.npy", np.zeros((4, 4))), "not an invertible affine transform"),
    (lambda d: (d / "faces.npy").unlink(), "faces.npy does not exist"),
])
def test_a_result_failing_any_check_is_refused_naming_the_file(tmp_path, damage, message):
    rng = np.random.default_rng(3)
    jobs.write_result(tmp_path, [_object(rng, 0), _object(rng, 1)])
    damage(tmp_path / "object_001")
    with pytest.raises(jobs.JobFolderError, match=message) as info:
        jobs.read_result(tmp_path, mask_count=2)
    assert "object_001" in info.value.message


def test_a_result_for_a_mask_the_job_does_not_have_is_refused(tmp_path):
    jobs.write_result(tmp_path, [_object(np.random.default_rng(4), mask_index=3)])
    with pytest.raises(jobs.JobFolderError, match="mask_index 3 is not one of the job's masks"):
        jobs.read_result(tmp_path, mask_count=2)


def test_dump_prints_a_job_folder_as_readable_json(tmp_path):
    rng = np.random.default_rng(5)
    jobs.write_job(tmp_path, jobs.JobSettings(weights="random", seed=3), np.zeros((4, 6, 3), np.uint8),
                   [np.eye(4, 6, dtype=bool)])
    jobs.write_result(tmp_path, [_object(rng)])
    out = subprocess.run([sys.executable, "-m", "engine.jobs", "dump", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    document = json.loads(out.stdout)
    assert document["job.json"]["settings"]["seed"] == 3
    assert document["files"]["mask_000.npy"] == {"shape": [4, 6], "dtype": "bool", "min": 0.0, "max": 1.0,
                                                 "true": 4}
    assert document["files"]["object_000/texture.png"] == {"png": [12, 8]}
    assert len(document["files"]["object_000/object_to_camera.npy"]["values"]) == 4
    assert '"shape": [30, 3]' in out.stdout  # short lists stay on one line


def test_an_object_without_a_mesh_is_refused_with_what_to_ask_for(tmp_path):
    only_gaussians = _object(np.random.default_rng(6), gaussians=True)
    only_gaussians.mesh = None
    jobs.write_result(tmp_path, [only_gaussians])
    with pytest.raises(jobs.JobFolderError, match="has no mesh") as info:
        jobs.read_result(tmp_path)
    assert "outputs ('mesh',)" in info.value.hint
