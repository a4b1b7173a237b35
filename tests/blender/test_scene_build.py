"""scene/build.py: checked results -> named, smooth, textured, posed objects in one new collection, all or nothing."""
from __future__ import annotations

import math
from types import SimpleNamespace

import bpy
import numpy as np
import pytest
from mathutils import Matrix

from tests.blender.support import add_camera, snapshot
from tests.engine.fake_pipeline import Mesh


def _cube(textured: bool, seed: int = 0):
    """A unit cube inside [-0.5, 0.5]^3 standing on z = -0.5, with per-vertex UVs and colours."""
    rng = np.random.default_rng(seed)
    vertices = np.array([[x, y, z] for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)], np.float32)
    faces = np.array([[0, 2, 3], [0, 3, 1], [4, 5, 7], [4, 7, 6], [0, 1, 5], [0, 5, 4],
                      [2, 6, 7], [2, 7, 3], [0, 4, 6], [0, 6, 2], [1, 3, 7], [1, 7, 5]], np.int32)
    colors = rng.random((8, 3)).astype(np.float32)
    texture = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8) if textured else None
    uvs = rng.random((8, 2)).astype(np.float32) if textured else None
    return Mesh(vertices, faces, vertex_colors=colors, uvs=uvs, texture=texture)


def _pose(angle_deg: float, axis, translation, scale: float) -> np.ndarray:
    m = Matrix.Translation(translation) @ Matrix.Rotation(math.radians(angle_deg), 4, axis) @ Matrix.Scale(scale, 4)
    return np.array(m, np.float64)


def _result(threedfy, folder, objects):
    jobs = threedfy.submodule("engine.jobs")
    folder.mkdir(parents=True, exist_ok=True)
    jobs.write_result(folder, [SimpleNamespace(mesh=m, object_to_camera=p, mask_index=i, gaussians=None)
                               for m, p, i in objects], weights={"id": "facebook/sam-3d-objects", "revision": "abc"})
    return jobs.read_result(folder, mask_count=3)


def _build(threedfy, result, camera, **options):
    build = threedfy.submodule("scene.build")
    placement = threedfy.submodule("scene.placement")
    provenance = build.Provenance(seed=7, quality="fast", source_image="//desk.png", weights="facebook/sam-3d-objects",
                                  weights_revision="abc")
    return build.create_objects(bpy.context.scene, result, names=["Lamp", "Mug", ""],
                                mask_hashes=["h0", "h1", "h2"], camera_matrix=placement.camera_to_world(camera),
                                provenance=provenance, **options)


def test_objects_are_built_from_the_arrays_named_after_their_masks_smooth_and_posed_through_the_camera(
        threedfy, tmp_path):
    camera = add_camera(location=(1.0, -5.0, 2.0), rotation_deg=(80.0, 0.0, 15.0), scale=(3.0, 3.0, 3.0))
    textured, colored = _cube(True, 1), _cube(False, 2)
    poses = [_pose(30, "Y", (0.2, -0.1, -4.0), 0.8), _pose(-50, "X", (-0.6, 0.3, -5.0), 1.3)]
    result = _result(threedfy, tmp_path / "job", [(textured, poses[0], 0), (colored, poses[1], 2)])
    collection, objects = _build(threedfy, result, camera)

    assert collection.name == "3Dfy 001" and collection.name in bpy.context.scene.collection.children
    assert [o.name for o in objects] == ["Lamp", "Object 3"] and list(collection.objects) == objects
    camera_to_world = Matrix.LocRotScale(*camera.matrix_world.decompose()[:2], None)  # the camera's scale removed
    for obj, source, pose in zip(objects, (textured, colored), poses):
        mesh = obj.data
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        np.testing.assert_allclose(co.reshape(-1, 3), source.vertices)
        corners = np.empty(len(mesh.loops), np.int32)
        mesh.loops.foreach_get("vertex_index", corners)
        np.testing.assert_array_equal(corners.reshape(-1, 3), source.faces)
        assert all(p.use_smooth for p in mesh.polygons)
        np.testing.assert_allclose(np.array(obj.matrix_world), np.array(camera_to_world @ Matrix(pose.tolist())),
                                   atol=1e-5)
        assert obj["threedfy_seed"] == 7 and obj["threedfy_quality"] == "fast"
        assert obj["threedfy_source_image"] == "//desk.png" and obj["threedfy_weights"] == "facebook/sam-3d-objects"
        assert obj["threedfy_weights_revision"] == "abc"
    assert objects[0]["threedfy_mask_hash"] == "h0" and objects[1]["threedfy_mask_index"] == 2

    # Textured: UVs per face corner from the per-vertex UVs, the PNG packed and feeding the Principled BSDF.
    uvs = np.empty(len(objects[0].data.loops) * 2, np.float32)
    objects[0].data.uv_layers["UVMap"].data.foreach_get("uv", uvs)
    np.testing.assert_allclose(uvs.reshape(-1, 2), textured.uvs[textured.faces.reshape(-1)])
    tree = objects[0].active_material.node_tree
    base = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED").inputs["Base Color"]
    image = base.links[0].from_node.image
    assert image.packed_file is not None and tuple(image.size) == (24, 16)
    # Vertex colours only: the colour attribute feeds the Base Color, so it does not render grey.
    tree = objects[1].active_material.node_tree
    base = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED").inputs["Base Color"]
    assert base.links[0].from_node.type == "VERTEX_COLOR" and base.links[0].from_node.layer_name == "Color"
    colors = np.empty(len(objects[1].data.vertices) * 4, np.float32)
    objects[1].data.color_attributes["Color"].data.foreach_get("color", colors)
    np.testing.assert_allclose(colors.reshape(-1, 4)[:, :3], colored.vertex_colors, atol=1e-6)


def test_origin_at_base_moves_the_origin_to_the_bottom_middle_and_keeps_the_object_where_it_was(threedfy, tmp_path):
    camera = add_camera()
    mesh = _cube(False)
    mesh.vertices[:, 2] = mesh.vertices[:, 2] * 0.5 + 0.1  # z in [-0.15, 0.35]
    pose = _pose(20, "Z", (0.0, 0.0, -3.0), 2.0)
    result = _result(threedfy, tmp_path / "job", [(mesh, pose, 0)])
    _, (plain,) = _build(threedfy, result, camera)
    _, (based,) = _build(threedfy, result, camera, origin_at_base=True)

    def world(obj):
        return np.array([tuple(obj.matrix_world @ v.co) for v in obj.data.vertices])

    np.testing.assert_allclose(world(based), world(plain), atol=1e-5)
    local = np.array([tuple(v.co) for v in based.data.vertices])
    np.testing.assert_allclose([local[:, 0].min() + local[:, 0].max(), local[:, 1].min() + local[:, 1].max(),
                                local[:, 2].min()], 0.0, atol=1e-6)


def test_collections_count_up_take_a_given_name_or_receive_objects_into_an_existing_one(threedfy, tmp_path):
    camera = add_camera()
    result = _result(threedfy, tmp_path / "job", [(_cube(False), _pose(0, "Z", (0, 0, -3), 1.0), 1)])
    assert _build(threedfy, result, camera)[0].name == "3Dfy 001"
    assert _build(threedfy, result, camera)[0].name == "3Dfy 002"
    assert _build(threedfy, result, camera, collection="Kitchen")[0].name == "Kitchen"
    existing = bpy.data.collections.new("Props")
    collection, (obj,) = _build(threedfy, result, camera, collection=existing)
    assert collection == existing and obj.name in existing.objects


def test_a_failure_halfway_takes_back_everything_already_built(threedfy, tmp_path, monkeypatch):
    camera = add_camera()
    objects = [(_cube(True, i), _pose(10 * i, "Z", (0, 0, -3 - i), 1.0), i) for i in range(3)]
    result = _result(threedfy, tmp_path / "job", objects)
    build = threedfy.submodule("scene.build")
    real = build.load_texture
    calls = []

    def failing(path, name):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(path, name)

    monkeypatch.setattr(build, "load_texture", failing)
    before = snapshot()
    with pytest.raises(RuntimeError, match="disk full"):
        _build(threedfy, result, camera)
    assert len(calls) == 3
    assert snapshot() == before


def test_packed_textures_survive_saving_and_reopening_the_file(threedfy, tmp_path):
    camera = add_camera()
    mesh = _cube(True, 3)
    result = _result(threedfy, tmp_path / "job", [(mesh, _pose(0, "Z", (0, 0, -3), 1.0), 0)])
    _build(threedfy, result, camera)
    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    for file in (tmp_path / "job").rglob("*.png"):
        file.unlink()  # the job folder is gone: only the packed copy can serve the texture now
    bpy.ops.wm.open_mainfile(filepath=str(path))
    image = bpy.data.images["Lamp Texture"]
    assert image.packed_file is not None
    pixels = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(pixels)
    rgb = np.flipud(pixels.reshape(16, 24, 4))[:, :, :3]
    np.testing.assert_allclose(np.round(rgb * 255), mesh.texture, atol=0.51)
    assert bpy.data.objects["Lamp"].active_material.node_tree.nodes["Image Texture"].image == image
