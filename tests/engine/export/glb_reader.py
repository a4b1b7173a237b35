"""A minimal GLB reader for tests: the container checked on the way, accessors as numpy arrays."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

COMPONENT = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(data: bytes):
    """Minimal GLB reader: (json dict, binary chunk). Checks the container on the way."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    gltf = json.loads(data[20:20 + json_length])
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    binary = data[28 + json_length:28 + json_length + bin_length]
    assert 28 + json_length + bin_length == len(data)
    return gltf, binary


def accessor(gltf, binary, index):
    a = gltf["accessors"][index]
    view = gltf["bufferViews"][a["bufferView"]]
    assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= len(binary)
    dtype = COMPONENT[a["componentType"]]
    width = WIDTH[a["type"]]
    start = view["byteOffset"] + a.get("byteOffset", 0)
    array = np.frombuffer(binary, dtype=dtype, count=a["count"] * width, offset=start)
    return array.reshape(a["count"], width) if width > 1 else array


def read_glb_mesh(path: str | Path) -> dict[str, np.ndarray]:
    """The first primitive of a .glb file: positions (y-up), indices, and COLOR_0 when present."""
    gltf, binary = read_glb(Path(path).read_bytes())
    primitive = gltf["meshes"][0]["primitives"][0]
    out = {"positions": accessor(gltf, binary, primitive["attributes"]["POSITION"]),
           "indices": accessor(gltf, binary, primitive["indices"]).reshape(-1)}
    if "COLOR_0" in primitive["attributes"]:
        out["colors"] = accessor(gltf, binary, primitive["attributes"]["COLOR_0"])
    return out
