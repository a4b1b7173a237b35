"""Job folders: the inputs of one reconstruct request and, after the run, its results, as plain files.

A job folder is what crosses the process boundary instead of arrays in messages. Blender writes the inputs
(`write_job`), the worker reads them (`read_job`) and writes the results (`write_result`), Blender reads and checks
them all before building anything (`read_result`). numpy + stdlib only: both sides import this module.

Layout (arrays are `.npy`; images and masks have row 0 at the top of the picture):

    job.json                 {"format", "version", "settings": {weights, preset, seed, quality, outputs,
                              keep_loaded}, "inputs": {image, masks, pointmap, intrinsics}}
    image.npy                (H, W, 3|4) uint8 | uint16 | float32, RGB(A)
    mask_000.npy ...         (H, W) bool | uint8 | float32 in [0, 1] (soft edges kept), one per object, in
                             request order (= mask_index)
    pointmap.npy             optional (H, W, 3) float32, passed to the pipeline as is
    intrinsics.npy           optional (3, 3) float64, pixels (u right, v down, pixel centres at +0.5)
    object_000/ ...          written by the worker, one per object, in result order:
        vertices.npy         (V, 3) float32, object-local (z-up, inside [-0.5, 0.5]^3)
        faces.npy            (F, 3) int32, counter-clockwise seen from outside
        vertex_colors.npy    optional (V, 3) float32 in [0, 1]
        uvs.npy              optional (V, 2) float32, origin bottom-left
        texture.png          optional base colour, 8-bit RGB, row 0 = top (needs uvs)
        object_to_camera.npy (4, 4) float64, column vectors, Blender/OpenGL camera frame
        gaussians/           optional xyz, colors, scaling, rotation, opacity .npy (engine.assets.Gaussians)
    result.json              written last by the worker: {"objects": [{mask_index, dir}], "weights", "seconds",
                             "camera": {intrinsics, image_size, pointmap_source} as the engine saw the picture};
                             its presence means the results are complete

`python -m engine.jobs dump JOB_DIR` prints a job folder as readable JSON (arrays summarised).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .assets import Gaussians, Mesh
from .errors import EngineError

__all__ = [
    "JOB_FORMAT", "JOB_VERSION", "JobSettings", "JobInputs", "ResultObject", "JobResult", "JobFolderError",
    "write_job", "read_job", "write_result", "read_result", "dump", "write_png", "png_size",
]

JOB_FORMAT = "threedfy-job"
JOB_VERSION = 1
_GAUSSIAN_FIELDS = ("xyz", "colors", "scaling", "rotation", "opacity")


class JobFolderError(EngineError):
    """A job folder, or a file in it, is missing or does not hold what the layout says (names the file)."""

    kind = "bad_job"


@dataclass(frozen=True)
class JobSettings:
    """How to run a job: everything the worker needs besides the arrays (device and precision are the worker's)."""

    weights: str  # engine weights source: a folder, "hf:REPO[@REV]" or "random"
    preset: str = "official"  # model configuration preset: official | tiny | demo
    seed: int = 0  # sampler seed; same seed + inputs + device = same result
    quality: str = "default"  # pipeline quality preset
    outputs: tuple[str, ...] = ("mesh",)  # what to decode: "mesh" and/or "gaussians"
    keep_loaded: bool = True  # keep the pipeline in memory after the run


@dataclass
class JobInputs:
    """A job as the worker reads it."""

    folder: Path
    settings: JobSettings
    image: np.ndarray  # (H, W, 3|4)
    masks: list[np.ndarray]  # each (H, W) bool | uint8 | float32
    pointmap: np.ndarray | None = None  # (H, W, 3) float32
    intrinsics: np.ndarray | None = None  # (3, 3) float64


@dataclass
class ResultObject:
    """One object as Blender reads it back: checked arrays, the texture as a file path (Blender loads the PNG)."""

    mask_index: int
    mesh: Mesh  # texture is None here: see texture_path
    object_to_camera: np.ndarray  # (4, 4) float64
    texture_path: Path | None = None
    gaussians: Gaussians | None = None


@dataclass
class JobResult:
    objects: list[ResultObject]
    weights: dict = field(default_factory=dict)  # {"source", "id", "revision"}
    seconds: float = 0.0
    camera: dict = field(default_factory=dict)  # {"intrinsics": 3x3 px, "image_size": [W, H], "pointmap_source"}


# ------------------------------------------------------------------------------------------------------------------
# Inputs


def write_job(folder: str | os.PathLike, settings: JobSettings, image: np.ndarray, masks: list[np.ndarray],
              pointmap: np.ndarray | None = None, intrinsics: np.ndarray | None = None) -> Path:
    """Write a job's inputs into `folder` (created; must be empty or new) and return it.

    Checks only the layout (shapes, dtypes); whether the inputs make sense is the pipeline's to judge.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise JobFolderError(f"Job folder {folder} is not empty", "use a new folder for every job")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype not in (np.uint8, np.uint16, np.float32):
        raise JobFolderError(f"image must be (H, W, 3|4) uint8, uint16 or float32, got {image.shape} {image.dtype}")
    if not masks:
        raise JobFolderError("a job needs at least one mask")
    inputs: dict = {"image": "image.npy", "masks": [], "pointmap": None, "intrinsics": None}
    np.save(folder / "image.npy", image)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise JobFolderError(f"mask {i} is {mask.shape}, the image is {image.shape[:2]}",
                                 "masks must have the image's size")
        if mask.dtype not in (np.bool_, np.uint8, np.float32):
            mask = mask.astype(np.float32)
        name = f"mask_{i:03d}.npy"
        np.save(folder / name, mask)
        inputs["masks"].append(name)
    if pointmap is not None:
        np.save(folder / "pointmap.npy", np.asarray(pointmap, np.float32))
        inputs["pointmap"] = "pointmap.npy"
    if intrinsics is not None:
        intrinsics = np.asarray(intrinsics, np.float64)
        if intrinsics.shape != (3, 3):
            raise JobFolderError(f"intrinsics must be 3x3, got {intrinsics.shape}")
        np.save(folder / "intrinsics.npy", intrinsics)
        inputs["intrinsics"] = "intrinsics.npy"
    document = {"format": JOB_FORMAT, "version": JOB_VERSION, "settings": asdict(settings), "inputs": inputs}
    _write_json_atomic(folder / "job.json", document)
    return folder


def read_job(folder: str | os.PathLike) -> JobInputs:
    """The job in `folder`, as written by `write_job`; raises JobFolderError naming the file at fault."""
    folder = Path(folder)
    document = _read_json(folder / "job.json")
    if document.get("format") != JOB_FORMAT or document.get("version") != JOB_VERSION:
        raise JobFolderError(f"{folder / 'job.json'} is not a version {JOB_VERSION} 3Dfy job",
                             "write the job with this version of 3Dfy")
    try:
        raw = dict(document["settings"])
        raw["outputs"] = tuple(raw.get("outputs", ("mesh",)))
        settings = JobSettings(**raw)
        inputs = document["inputs"]
        image = _load(folder, inputs["image"])
        masks = [_load(folder, name) for name in inputs["masks"]]
        pointmap = _load(folder, inputs["pointmap"]) if inputs.get("pointmap") else None
        intrinsics = _load(folder, inputs["intrinsics"]) if inputs.get("intrinsics") else None
    except (KeyError, TypeError) as exc:
        raise JobFolderError(f"{folder / 'job.json'} lacks or mistypes {exc}") from None
    return JobInputs(folder, settings, image, masks, pointmap, intrinsics)


# ------------------------------------------------------------------------------------------------------------------
# Results


def write_result(folder: str | os.PathLike, objects, weights: dict | None = None, seconds: float = 0.0,
                 camera: dict | None = None) -> Path:
    """Write the pipeline's objects (each with .mesh, .gaussians, .object_to_camera, .mask_index) into `folder`.

    camera: how the engine saw the picture (intrinsics, image_size, pointmap_source), for a matching camera.
    result.json goes last, through a rename, so a reader never sees half a result.
    """
    folder = Path(folder)
    entries = []
    for i, obj in enumerate(objects):
        sub = folder / f"object_{i:03d}"
        sub.mkdir(exist_ok=True)
        mesh = obj.mesh
        if mesh is not None:  # None when only Gaussians were asked for
            np.save(sub / "vertices.npy", np.asarray(mesh.vertices, np.float32))
            np.save(sub / "faces.npy", np.asarray(mesh.faces, np.int32))
            if mesh.vertex_colors is not None:
                np.save(sub / "vertex_colors.npy", np.asarray(mesh.vertex_colors, np.float32)[:, :3])
            if mesh.uvs is not None:
                np.save(sub / "uvs.npy", np.asarray(mesh.uvs, np.float32))
            if mesh.texture is not None:
                write_png(sub / "texture.png", np.asarray(mesh.texture))
        np.save(sub / "object_to_camera.npy", np.asarray(obj.object_to_camera, np.float64))
        if getattr(obj, "gaussians", None) is not None:
            (sub / "gaussians").mkdir(exist_ok=True)
            for name in _GAUSSIAN_FIELDS:
                np.save(sub / "gaussians" / f"{name}.npy", np.asarray(getattr(obj.gaussians, name), np.float32))
        entries.append({"mask_index": int(obj.mask_index), "dir": sub.name})
    document = {"objects": entries, "weights": dict(weights or {}), "seconds": float(seconds),
                "camera": dict(camera or {})}
    _write_json_atomic(folder / "result.json", document)
    return folder


def read_result(folder: str | os.PathLike, mask_count: int | None = None) -> JobResult:
    """Read and check every result array in `folder`; raises JobFolderError on the first problem, naming the file.

    Checked: shapes, dtypes, finite values, face indices within the vertices, UVs present when there is a
    texture, a valid PNG, an invertible affine `object_to_camera` (last row [0, 0, 0, 1]), mask indices
    within `mask_count`. Nothing is built from a result that fails any of these.
    """
    folder = Path(folder)
    document = _read_json(folder / "result.json")
    objects = []
    for entry in document.get("objects", []):
        sub = folder / str(entry.get("dir", ""))
        mask_index = entry.get("mask_index")
        if not isinstance(mask_index, int) or mask_index < 0 or (mask_count is not None and mask_index >= mask_count):
            raise JobFolderError(f"{folder / 'result.json'}: mask_index {mask_index!r} is not one of the job's masks")
        if not (sub / "vertices.npy").exists() and (sub / "object_to_camera.npy").exists():
            raise JobFolderError(f"{sub} has no mesh", "ask the engine for outputs ('mesh',)")
        vertices = _checked(sub / "vertices.npy", ndim=2, cols=3, kind="f")
        faces = _checked(sub / "faces.npy", ndim=2, cols=3, kind="iu")
        if len(vertices) == 0 or len(faces) == 0:
            raise JobFolderError(f"{sub}: the mesh is empty", "the object was not found in its mask; try another seed")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise JobFolderError(f"{sub / 'faces.npy'}: a face refers to a vertex that does not exist")
        colors = _checked(sub / "vertex_colors.npy", ndim=2, cols=3, kind="f", rows=len(vertices), optional=True)
        uvs = _checked(sub / "uvs.npy", ndim=2, cols=2, kind="f", rows=len(vertices), optional=True)
        texture_path = sub / "texture.png"
        if texture_path.exists():
            png_size(texture_path)
            if uvs is None:
                raise JobFolderError(f"{sub}: a texture without UVs", "the engine must write uvs.npy with texture.png")
        else:
            texture_path = None
        pose = _checked(sub / "object_to_camera.npy", ndim=2, cols=4, kind="f", rows=4).astype(np.float64)
        if not np.allclose(pose[3], (0.0, 0.0, 0.0, 1.0), atol=1e-6) or abs(np.linalg.det(pose[:3, :3])) < 1e-12:
            raise JobFolderError(f"{sub / 'object_to_camera.npy'} is not an invertible affine transform")
        gaussians = None
        if (sub / "gaussians").is_dir():
            parts = {name: _checked(sub / "gaussians" / f"{name}.npy", ndim=None, kind="f")
                     for name in _GAUSSIAN_FIELDS}
            gaussians = Gaussians(**parts)
        mesh = Mesh(vertices.astype(np.float32), faces.astype(np.int32),
                    vertex_colors=None if colors is None else colors.astype(np.float32),
                    uvs=None if uvs is None else uvs.astype(np.float32))
        objects.append(ResultObject(mask_index, mesh, pose, texture_path, gaussians))
    return JobResult(objects, dict(document.get("weights") or {}), float(document.get("seconds") or 0.0),
                     dict(document.get("camera") or {}))


# ------------------------------------------------------------------------------------------------------------------
# Dump


def dump(folder: str | os.PathLike) -> dict:
    """A job folder as a JSON-ready dict: job.json and result.json as they are, every array and PNG summarised."""
    folder = Path(folder)
    out: dict = {"folder": str(folder)}
    for name in ("job.json", "result.json"):
        if (folder / name).exists():
            out[name] = _read_json(folder / name)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".npy", ".png")):
        rel = path.relative_to(folder).as_posix()
        try:
            files[rel] = _summary(path)
        except (OSError, ValueError, JobFolderError) as exc:
            files[rel] = {"unreadable": str(exc)}
    out["files"] = files
    return out


def _summary(path: Path) -> dict:
    if path.suffix == ".png":
        width, height = png_size(path)
        return {"png": [width, height]}
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    info: dict = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if array.size and array.dtype.kind in "biuf":
        values = np.asarray(array, dtype=np.float64)
        finite = np.isfinite(values)
        if finite.any():
            info["min"] = float(values[finite].min())
            info["max"] = float(values[finite].max())
        if not finite.all():
            info["non_finite"] = int((~finite).sum())
        if array.dtype == bool:
            info["true"] = int(np.count_nonzero(array))
        if array.ndim == 2 and array.shape[0] <= 4 and array.shape[1] <= 4:
            info["values"] = values.tolist()
    return info


# ------------------------------------------------------------------------------------------------------------------
# PNG (8-bit grey/RGB/RGBA, no dependencies: the engine and Blender both read it)


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write (H, W) grey or (H, W, 3|4) RGB(A) uint8 pixels, row 0 = top, as a PNG."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W, 1)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or pixels.dtype != np.uint8:
        raise ValueError(f"write_png needs (H, W) or (H, W, 3|4) uint8, got {pixels.shape} {pixels.dtype}")
    height, width, channels = pixels.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, width * channels)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    colour_type = {1: 0, 3: 2, 4: 6}[channels]  # PNG colour types: grey, RGB, RGBA
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
                + chunk(b"IEND", b""))


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from a PNG's header; raises JobFolderError if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise JobFolderError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


# ------------------------------------------------------------------------------------------------------------------
# Helpers


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise JobFolderError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise JobFolderError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobFolderError(f"{path} does not hold a JSON object")
    return data


def _write_json_atomic(path: Path, document: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
    os.replace(temporary, path)


def _load(folder: Path, name: str) -> np.ndarray:
    path = folder / name
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise JobFolderError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise JobFolderError(f"{path} is not a readable .npy array: {exc}") from None


def _checked(path: Path, ndim: int | None, kind: str, cols: int | None = None, rows: int | None = None,
             optional: bool = False) -> np.ndarray | None:
    if optional and not path.exists():
        return None
    array = _load(path.parent, path.name)
    if ndim is not None and array.ndim != ndim:
        raise JobFolderError(f"{path} has {array.ndim} dimensions, expected {ndim}")
    if cols is not None and array.shape[-1] != cols:
        raise JobFolderError(f"{path} has shape {array.shape}, expected {cols} columns")
    if rows is not None and array.shape[0] != rows:
        raise JobFolderError(f"{path} has {array.shape[0]} rows, expected {rows}")
    if array.dtype.kind not in kind:
        raise JobFolderError(f"{path} has dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise JobFolderError(f"{path} holds NaN or infinite values")
    return array


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.jobs", description="Inspect 3Dfy job folders.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dump", help="print a job folder as readable JSON").add_argument("folder")
    args = parser.parse_args(argv)
    if not Path(args.folder).is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    text = json.dumps(dump(args.folder), indent=2)
    # Lists of plain values on one line: shapes, ranges and matrix rows stay readable.
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
