"""Binary glTF 2.0 (.glb) writer for one engine Mesh: textured (embedded PNG) or vertex-coloured.

What is written (one scene, one node, one mesh, one triangle primitive, one material):

* POSITION and NORMAL (float32, y-up: `frames.object_to_gltf`), indices (uint16 when they fit, else uint32).
* With a texture: TEXCOORD_0 (float32, v flipped: glTF's UV origin is the image's top-left, the engine's is the
  bottom-left) and a PBR material whose baseColorTexture is the PNG, embedded through a bufferView. The texture
  holds the colours as the decoder gives them (display values), which is what glTF expects there (sRGB).
* Without a texture but with vertex colours: COLOR_0 (float32 RGB). glTF defines COLOR_0 as linear, so the
  display values are decoded with the sRGB curve; viewers then show the same colours as a texture would.
* Metallic 0, roughness 1 (a diffuse base colour, like upstream's export), single-sided (the clean-up makes
  the winding counter-clockwise seen from outside).

Layout: 12-byte header, JSON chunk (padded with spaces), BIN chunk (padded with zeros); every bufferView starts
on a 4-byte boundary. No node transform: the geometry itself is y-up.

Meshes that would make a file glTF viewers reject (faces past the vertex array, NaN UVs or colours, a row count
that is not the vertex count) are refused with an InputError; the tests run the Khronos glTF validator on the output.
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from ..assets import Mesh
from ..errors import InputError
from ..frames import gltf_to_object, object_to_gltf
from .normals import vertex_normals

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
NEUTRAL_GREY = 0.8  # base colour of a mesh with neither texture nor vertex colours
_GLTF_TO_OBJECT_4X4 = np.eye(4)
_GLTF_TO_OBJECT_4X4[:3, :3] = gltf_to_object(np.eye(3)).T  # column-vector form of the y-up -> z-up turn


def write_glb(path: str | Path, mesh: Mesh, name: str = "3Dfy object") -> Path:
    """Write `mesh` to `path` as .glb (see the module docstring). Returns the path."""
    path = Path(path)
    path.write_bytes(glb_bytes(mesh, name))
    return path


def glb_bytes(mesh: Mesh, name: str = "3Dfy object") -> bytes:
    """The .glb file of `mesh` as bytes."""
    return scene_glb_bytes([(mesh, None, name)])


def write_scene_glb(path: str | Path, objects: Sequence[tuple[Mesh, np.ndarray, str]]) -> Path:
    """Several meshes in one .glb, each under a node placed by its 4x4 `object_to_camera` (column vectors).

    The Blender/OpenGL camera frame is y-up and looks down -Z, as glTF's own frame, so the camera sits at the
    origin of the file looking along -Z and every object stands where the engine placed it.
    """
    path = Path(path)
    path.write_bytes(scene_glb_bytes(objects))
    return path


def scene_glb_bytes(objects: Sequence[tuple[Mesh, np.ndarray | None, str]]) -> bytes:
    """(mesh, object_to_camera or None, name) per object -> .glb bytes (one node, mesh and material each)."""
    if not objects:
        raise InputError("nothing to export: no mesh was given", "reconstruct at least one object")
    builder = _Builder()
    gltf: dict = {"images": [], "samplers": [], "textures": [], "materials": [], "meshes": [], "nodes": []}
    for mesh, object_to_camera, name in objects:
        _add_object(builder, gltf, mesh, object_to_camera, name)
    gltf = {k: v for k, v in gltf.items() if v}
    gltf.update({
        "asset": {"version": "2.0", "generator": "3Dfy"},
        "scene": 0,
        "scenes": [{"nodes": list(range(len(objects)))}],
        "accessors": builder.accessors,
        "bufferViews": builder.views,
        "buffers": [{"byteLength": len(builder.data)}],
    })
    return _pack(gltf, bytes(builder.data))


def _add_object(builder: _Builder, gltf: dict, mesh: Mesh, object_to_camera: np.ndarray | None, name: str) -> None:
    _check(mesh)
    if object_to_camera is not None:
        _check_placement(object_to_camera, name)
    vertices = np.asarray(mesh.vertices, np.float32)
    faces = np.asarray(mesh.faces, np.int64)
    textured = mesh.texture is not None and mesh.uvs is not None

    index_type = UNSIGNED_SHORT if vertices.shape[0] < 0xFFFF else UNSIGNED_INT
    indices = faces.astype(np.uint16 if index_type == UNSIGNED_SHORT else np.uint32).reshape(-1)
    attributes = {
        "POSITION": builder.accessor(object_to_gltf(vertices).astype(np.float32), "VEC3", with_bounds=True),
        "NORMAL": builder.accessor(object_to_gltf(vertex_normals(vertices, faces)).astype(np.float32), "VEC3"),
    }
    material: dict = {"name": f"{name} base colour",
                      "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0}}
    if textured:
        uv = np.asarray(mesh.uvs, np.float32).copy()
        uv[:, 1] = 1.0 - uv[:, 1]
        attributes["TEXCOORD_0"] = builder.accessor(uv, "VEC2")
        png = _png_bytes(np.asarray(mesh.texture))
        gltf["images"].append({"bufferView": builder.view(png), "mimeType": "image/png", "name": f"{name} base colour"})
        gltf["samplers"].append({"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
                                 "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE})
        gltf["textures"].append({"sampler": len(gltf["samplers"]) - 1, "source": len(gltf["images"]) - 1})
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": len(gltf["textures"]) - 1, "texCoord": 0}
    elif mesh.vertex_colors is not None:
        linear = srgb_to_linear(np.clip(np.asarray(mesh.vertex_colors, np.float32), 0.0, 1.0))
        attributes["COLOR_0"] = builder.accessor(linear.astype(np.float32), "VEC3")
    else:
        material["pbrMetallicRoughness"]["baseColorFactor"] = [NEUTRAL_GREY, NEUTRAL_GREY, NEUTRAL_GREY, 1.0]
    index_accessor = builder.accessor(indices, "SCALAR", component=index_type, target=ELEMENT_ARRAY_BUFFER)
    gltf["materials"].append(material)
    gltf["meshes"].append({"name": name, "primitives": [
        {"attributes": attributes, "indices": index_accessor, "material": len(gltf["materials"]) - 1, "mode": 4}]})
    node: dict = {"mesh": len(gltf["meshes"]) - 1, "name": name}
    if object_to_camera is not None:
        # The mesh data is y-up; the node first turns it back to the object's z-up frame, then places it.
        matrix = np.asarray(object_to_camera, np.float64) @ _GLTF_TO_OBJECT_4X4
        node["matrix"] = [float(v) for v in matrix.T.reshape(-1)]  # glTF stores column-major
    gltf["nodes"].append(node)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB decoding curve (IEC 61966-2-1), elementwise on values in [0, 1]."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Inverse of `srgb_to_linear`."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.maximum(c, 0.0) ** (1 / 2.4) - 0.055)


class _Builder:
    """Appends arrays to one binary buffer and records bufferViews and accessors for them."""

    def __init__(self):
        self.data = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, blob: bytes, target: int | None = None) -> int:
        self.data.extend(b"\0" * (-len(self.data) % 4))
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": len(blob)}
        if target is not None:
            view["target"] = target
        self.data.extend(blob)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int = FLOAT, target: int = ARRAY_BUFFER,
                 with_bounds: bool = False) -> int:
        array = np.ascontiguousarray(array)
        accessor = {"bufferView": self.view(array.tobytes(), target), "componentType": component,
                    "count": int(array.shape[0]), "type": kind}
        if with_bounds:
            accessor["min"] = [float(x) for x in array.min(axis=0)]
            accessor["max"] = [float(x) for x in array.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def _pack(gltf: dict, binary: bytes) -> bytes:
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([
        struct.pack("<III", GLB_MAGIC, 2, total),
        struct.pack("<II", len(text), CHUNK_JSON), text,
        struct.pack("<II", len(binary), CHUNK_BIN), binary,
    ])


def _png_bytes(texture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(texture, dtype=np.uint8)).save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def _check(mesh: Mesh) -> None:
    # Everything here would otherwise end up as a file that viewers reject (the glTF validator's errors).
    count = mesh.vertices.shape[0]
    if mesh.faces.shape[0] == 0:
        raise InputError("cannot export an empty mesh (no faces)", "postprocess a mesh with faces first")
    if not np.isfinite(mesh.vertices).all():
        raise InputError("cannot export a mesh with NaN or infinite vertices", "run the postprocess clean-up first")
    low, high = int(mesh.faces.min()), int(mesh.faces.max())
    if low < 0 or high >= count:
        raise InputError(f"the faces use vertex indices {low}..{high} but the mesh has {count} vertices",
                         "drop the faces that point past the vertex array")
    if mesh.texture is not None and (mesh.texture.ndim != 3 or mesh.texture.shape[2] != 3):
        raise InputError(f"the texture is {mesh.texture.shape}, expected (H, W, 3) uint8", "pass an RGB texture")
    if mesh.texture is not None and mesh.uvs is None:
        raise InputError("the mesh has a texture but no UVs", "unwrap it (engine.postprocess.unwrap) first")
    # Only what is written is checked: the UVs with a texture, else the vertex colours.
    name, array, width = ("uvs", mesh.uvs, 2) if mesh.texture is not None else ("vertex_colors", mesh.vertex_colors, 3)
    if array is not None and array.shape != (count, width):
        raise InputError(f"the mesh's {name} are {array.shape}, expected ({count}, {width}): one row per vertex",
                         f"give {name} for every vertex")
    if array is not None and not np.isfinite(array).all():
        raise InputError(f"the mesh's {name} hold NaN or infinite values",
                         "replace them (e.g. with numpy.nan_to_num) before export")


def _check_placement(object_to_camera: np.ndarray, name: str) -> None:
    matrix = np.asarray(object_to_camera)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise InputError(f"the placement of {name!r} is not a finite 4x4 matrix (got shape {matrix.shape})",
                         "pass the object's object_to_camera, or None to leave it unplaced")
