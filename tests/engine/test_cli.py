"""`python -m engine reconstruct` in a subprocess, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.engine.tiny_moge import write_tiny_moge
from tests.paths import REPO


def _run(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "THREEDFY_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _photo(tmp_path, h=56, w=84):
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 255 // w, yy * 255 // h, (128 + 60 * np.sin(xx / 5)).astype(int)], -1).astype(np.uint8)
    mask = ((((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2) < 1).astype(np.uint8) * 255
    Image.fromarray(image).save(tmp_path / "photo.jpg")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "photo.jpg", tmp_path / "mask.png"


def test_a_photo_goes_end_to_end_with_tiny_weights_and_an_estimated_pointmap(tmp_path):
    photo, mask = _photo(tmp_path)
    write_tiny_moge(tmp_path / "moge.pt")
    out = tmp_path / "out"
    proc = _run("reconstruct", str(photo), "--mask", str(mask), "--weights", "random", "--preset", "tiny",
                "--depth-weights", str(tmp_path / "moge.pt"), "--quality", "fast", "--device", "cpu",
                "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[pointmap] 100%" in proc.stderr and "[mesh] 100%" in proc.stderr
    poses = json.loads((out / "poses.json").read_text())
    assert poses["pointmap"] == "estimated" and len(poses["objects"]) == 1
    m = np.array(poses["objects"][0]["object_to_camera"])
    assert m.shape == (4, 4) and np.isfinite(m).all()
    for name in ("object_01.glb", "object_01.ply", "scene.glb"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "object_01.glb").read_bytes()[:4] == b"glTF"
    assert (out / "object_01.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["reconstruct", str(d / "missing.png"), "--mask", str(d / "mask.png")], "image file not found"),
        (lambda d: ["reconstruct", str(d / "photo.jpg"), "--mask", str(d / "empty.png")], "is empty"),
        (lambda d: ["reconstruct", str(d / "photo.jpg"), "--mask", str(d / "small.png")], "must have the image's size"),
        (lambda d: ["reconstruct", str(d / "photo.jpg"), "--mask", str(d / "mask.png"), "--intrinsics", "1,2"],
         "fx,fy,cx,cy"),
        (lambda d: ["reconstruct", str(d / "photo.jpg"), "--mask", str(d / "mask.png"), "--pointmap",
                    str(d / "mask.png")], "cannot read the pointmap"),
        (lambda d: ["reconstruct", str(d / "text.png"), "--mask", str(d / "mask.png")], "cannot read text.png"),
    ],
    ids=["missing-image", "empty-mask", "mask-size", "intrinsics", "pointmap-file", "not-an-image"],
)
def test_bad_input_ends_with_one_line_and_status_2(tmp_path, make_args, message):
    _photo(tmp_path)
    Image.fromarray(np.zeros((56, 84), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("hello")
    out = tmp_path / "out"
    proc = _run(*make_args(tmp_path), "--weights", "random", "--preset", "tiny", "--device", "cpu", "--out", str(out),
                tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
