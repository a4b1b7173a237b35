"""Prompt -> mask segmentation (engine/segment.py) as Blender asks for it: `EngineClient.segment` through a real
worker process, with random tiny SAM weights (`random:tiny`, a saved state dict, or a loopback fake hub).

One client (one worker, one torch import) serves most tests; the hub test starts its own, because the worker must
know the hub's address when it starts. Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.client import EngineClient, EngineConfig, RemoteError
from engine.errors import Cancelled
from engine.images import load_image
from engine.jobs import write_png
from engine.protocol import Message, ProtocolError, parse_text
from engine.sam.predictor import SamPredictor
from engine.sam.weights import RANDOM_SEED, load_sam, random_sam
from engine.segment import SegmentRequest, SegmentSession
from tests.engine.weights.test_hub import REPO as HUB_REPO
from tests.engine.weights.test_hub import FakeHub
from tests.paths import REPO

TINY = "random:tiny"


def picture(path: Path, height: int, width: int, seed: int) -> Path:
    """A random RGB picture file (fresh content per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return path


def clicks(count: int, height: int, width: int, seed: int) -> list[list[float]]:
    """`count` random click positions inside a (height, width) picture, in pixels."""
    return np.random.default_rng(seed).uniform((0, 0), (width, height), (count, 2)).round(2).tolist()


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", im.mode  # 8-bit grey
        return np.asarray(im)


def predictor_mask(model, image_path: Path, points, labels, box=None, multimask=False) -> tuple[np.ndarray, float]:
    """What SamPredictor itself answers, chosen as the segment request documents (best non-empty when multimask)."""
    predictor = SamPredictor(model)
    predictor.set_image(load_image(image_path))
    prediction = predictor.predict(points, labels, box, multimask=multimask, allow_empty=True)
    scores = np.where(prediction.masks.any(axis=(1, 2)), prediction.scores, -np.inf)
    best = int(np.argmax(scores))
    return prediction.masks[best], float(prediction.scores[best])


def run(request) -> tuple[dict, list[Message]]:
    """Wait for a request, collecting its messages; returns (result payload, messages)."""
    messages = []
    while not request.pump(0.05):
        messages += request.poll()
    messages += request.poll()
    return request.outcome(), messages


def fail(request) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        request.wait(60)
    return info.value


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "engine.log"
    c = EngineClient(EngineConfig(python=sys.executable, root=str(REPO), device="cpu", log_path=str(log),
                                  env=(("PYTHONPATH", str(REPO)), ("HF_HUB_OFFLINE", "1"))))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    """A tiny SAM saved as upstream saves its checkpoints, with other weights than `random:tiny`."""
    path = tmp_path_factory.mktemp("sam") / "sam_tiny_test.pth"
    torch.save(random_sam("tiny", seed=RANDOM_SEED + 7).state_dict(), path)
    return path


# -- through the worker -------------------------------------------------------------------------------------------


def test_a_segment_writes_a_mask_of_the_pictures_size_and_the_next_click_reuses_the_embedding(client, tmp_path):
    image = picture(tmp_path / "photo.png", 45, 61, seed=11)
    out = tmp_path / "masks" / "lamp.png"  # the folder does not exist yet
    result, messages = run(client.segment(image, out, clicks(1, 45, 61, seed=12), [1], sam=TINY))
    stages = [m.payload["stage"] for m in messages if m.kind == "progress"]
    assert stages[0] == "load" and stages[-1] == "write" and "embed" in stages
    mask = read_mask(out)
    assert mask.shape == (45, 61) and set(np.unique(mask)) <= {0, 255}
    rows, cols = np.nonzero(mask)
    assert set(result) == {"out", "score", "area", "bbox", "size", "cached"}
    assert result["out"] == str(out) and result["size"] == [61, 45] and result["cached"] is False
    assert result["area"] == rows.size and 0 < rows.size < 45 * 61 and isinstance(result["score"], float)
    assert result["bbox"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]  # pixel edges
    assert sorted(p.name for p in out.parent.iterdir()) == ["lamp.png"]  # no temporary file left behind

    again, _ = run(client.segment(image, tmp_path / "masks" / "lamp2.png", clicks(2, 45, 61, seed=13), [1, 0],
                                  sam=TINY))
    assert again["cached"] is True and read_mask(tmp_path / "masks" / "lamp2.png").shape == (45, 61)
    other = picture(tmp_path / "other.png", 45, 61, seed=14)
    assert run(client.segment(other, tmp_path / "o.png", [[3.5, 7.25]], [1], sam=TINY))[0]["cached"] is False


@pytest.mark.parametrize("prompt", [
    {"points": 1, "labels": [1]},
    {"points": 3, "labels": [1, 0, 1]},
    {"points": 1, "labels": [1], "multimask": True},
    {"points": 0, "labels": [], "box": [4.5, 6.0, 40.25, 30.0]},
    {"points": 2, "labels": [1, 0], "box": [2.0, 3.0, 50.0, 33.0]},
])
def test_the_worker_writes_exactly_the_mask_sam_predictor_gives(client, tmp_path, prompt):
    height, width = 37, 52
    image = picture(tmp_path / "p.png", height, width, seed=21 + prompt["points"])
    points = clicks(prompt["points"], height, width, seed=31 + prompt["points"])
    box, multimask = prompt.get("box"), prompt.get("multimask", False)
    expected, score = predictor_mask(random_sam("tiny", seed=RANDOM_SEED), image, points or None,
                                     prompt["labels"] or None, box, multimask)
    assert expected.any(), "pick other random prompts: this one leaves the mask empty"
    result, _ = run(client.segment(image, tmp_path / "m.png", points, prompt["labels"], box=box, multimask=multimask,
                                   sam=TINY))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), np.where(expected, 255, 0))
    assert result["score"] == pytest.approx(score, abs=1e-6) and result["area"] == int(expected.sum())


def test_a_weights_file_is_loaded_once_kept_and_loaded_again_after_release(client, tiny_file, tmp_path):
    weights = tmp_path / "sam_tiny.pth"
    weights.write_bytes(tiny_file.read_bytes())
    image = picture(tmp_path / "p.png", 40, 48, seed=41)
    points = clicks(1, 40, 48, seed=42)
    first, _ = run(client.segment(image, tmp_path / "a.png", points, [1], sam=str(weights), sam_size="tiny"))
    expected, _ = predictor_mask(load_sam(tiny_file, variant="tiny"), image, points, [1])
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), np.where(expected, 255, 0))
    assert first["cached"] is False

    weights.write_bytes(b"no longer a checkpoint")  # the loaded model is kept: the file is not read again
    second, _ = run(client.segment(image, tmp_path / "b.png", points, [1], sam=str(weights), sam_size="tiny"))
    assert second["cached"] is True and second["area"] == first["area"]

    assert "vram_free" in client.release().wait(30)
    error = fail(client.segment(image, tmp_path / "c.png", points, [1], sam=str(weights), sam_size="tiny"))
    assert error.kind == "weights" and str(weights) in error.message and error.hint
    assert not (tmp_path / "c.png").exists()

    weights.write_bytes(tiny_file.read_bytes())
    third, _ = run(client.segment(image, tmp_path / "d.png", points, [1], sam=str(weights), sam_size="tiny"))
    assert third["cached"] is False and third["area"] == first["area"]  # release dropped the embedding too


@pytest.fixture(scope="module")
def empty_sam_file(tmp_path_factory) -> Path:
    """A tiny SAM whose mask hypernetworks answer zero: every mask logit is 0, so every mask is empty."""
    state = random_sam("tiny", seed=RANDOM_SEED + 3).state_dict()
    for key in state:
        if key.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in key:
            state[key] = torch.zeros_like(state[key])
    path = tmp_path_factory.mktemp("sam_empty") / "sam_empty.pth"
    torch.save(state, path)
    return path


BAD = {  # case: (fields that spoil a sound request on {tmp}/p.png, 50 x 36 px; error kind; message part; hint part)
    "point outside": ({"points": [[12.0, 8.0], [50.5, 20.0]], "labels": [1, 1]}, "bad_input",
                      "point 1 at (50.5, 20) lies outside the 50x36 image", "inside"),
    "point above": ({"points": [[12.0, -0.5]]}, "bad_input", "outside the 50x36 image", "inside"),
    "box outside": ({"points": [], "labels": [], "box": [3.0, 4.0, 20.0, 36.5]}, "bad_input",
                    "reaches outside the 50x36 image", "box"),
    "no prompts": ({"points": [], "labels": []}, "bad_input", "no prompt", "click on the object"),
    "labels do not match": ({"points": [[3.0, 4.0], [9.0, 9.0]], "labels": [1]}, "bad_input",
                            "2 point(s) but 1 label(s)", "one label per point"),
    "a label that is neither": ({"labels": [2]}, "bad_input",
                                "point 0 has label 2; labels must be 1 (add) or 0 (remove)", "label each click"),
    "points that are not pairs": ({"points": [[3.0, 4.0, 5.0]]}, "bad_input", "expected a list of [x, y]", ""),
    "missing picture": ({"image": "{tmp}/missing.png"}, "bad_input", "image file not found", "check the path"),
    "unreadable picture": ({"image": "{tmp}/garbage.png"}, "bad_input", "cannot read garbage.png", "PNG"),
    "picture without pixels": ({"image": "{tmp}/empty.png"}, "bad_input", "cannot read empty.png", "PNG"),
    "picture too small": ({"image": "{tmp}/small.png", "points": [[2.0, 3.0]]}, "bad_input",
                          "picture small.png is 10x8 pixels", "16 pixels"),
    "mask path not png": ({"out": "{tmp}/mask.jpg"}, "bad_input", "is not a .png path", ".png"),
    "no weights": ({"sam": None}, "weights", "no SAM weights were given", "sam_vit_b"),
    "missing weights": ({"sam": "{tmp}/missing.pth"}, "weights", "missing.pth not found", "segment-anything"),
    "corrupt weights": ({"sam": "{tmp}/corrupt.pth"}, "weights", "corrupt.pth: is truncated or corrupt", ""),
    "weights of another model": ({"sam": "{tmp}/other.pth"}, "weights", "other.pth is not a SAM checkpoint",
                                 "sam_vit_b"),
    "unknown random size": ({"sam": "random:huge"}, "weights", "unknown SAM model spec 'random:huge'", "tiny"),
    "unknown scheme": ({"sam": "s3://bucket/sam_vit_b.pth"}, "weights", "unknown SAM model spec", "hf:OWNER"),
    "bad hub spec": ({"sam": "hf:someone/repo"}, "weights", "not a hub file spec", "hf:OWNER/NAME"),
    "size that does not match": ({"sam_size": "vit_b"}, "weights", "is a tiny model, not vit_b", "random:vit_b"),
    "empty mask": ({"sam": "{empty}", "sam_size": "tiny"}, "bad_input", "the mask is empty",
                   "positive click (label 1)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_is_refused_with_what_is_wrong_and_how_to_fix_it_and_writes_nothing(
        client, tmp_path, empty_sam_file, case):
    fields, kind, message, hint = BAD[case]
    picture(tmp_path / "p.png", 36, 50, seed=51)
    picture(tmp_path / "small.png", 8, 10, seed=52)
    (tmp_path / "garbage.png").write_bytes(np.random.default_rng(53).bytes(300))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04" + np.random.default_rng(54).bytes(200))
    torch.save({"encoder.weight": torch.randn(3, 2)}, tmp_path / "other.pth")
    request = {"image": "{tmp}/p.png", "out": "{tmp}/masks/m.png", "points": [[12.0, 8.0]], "labels": [1],
               "box": None, "sam": TINY, "sam_size": None, **fields}
    request = {k: v.format(tmp=tmp_path, empty=empty_sam_file) if isinstance(v, str) else v
               for k, v in request.items()}
    error = fail(client.segment(**request))
    assert error.kind == kind, error
    assert message in error.message and "\n" not in error.message, error.message
    assert hint in error.hint and error.hint and error.traceback == "", error.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corrupt.pth", "empty.png", "garbage.png", "other.pth", "p.png", "small.png"]  # nothing written


def test_a_cancel_while_sam_loads_stops_before_predicting(client, tmp_path):
    image = picture(tmp_path / "p.png", 30, 40, seed=61)
    pid = client.start()["pid"]
    request = client.segment(image, tmp_path / "m.png", [[10.0, 12.0]], [1], sam="random:vit_b")  # ~1 s to build
    while not request.progress:
        assert not request.pump(0.02), request.error
    assert request.progress == ("load", 0.0)
    request.cancel()
    with pytest.raises(Cancelled):
        request.wait(60)
    assert not (tmp_path / "m.png").exists() and client.pid == pid
    assert run(client.segment(image, tmp_path / "m.png", [[10.0, 12.0]], [1], sam=TINY))[0]["area"] > 0


def test_a_hub_file_is_downloaded_once_with_progress(tiny_file, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "sam_tiny.pth").write_bytes(tiny_file.read_bytes())
    image = picture(tmp_path / "p.png", 33, 47, seed=71)
    spec = f"hf:{HUB_REPO}/checkpoints/sam_tiny.pth"
    with FakeHub(served) as hub:
        env = (("PYTHONPATH", str(REPO)), ("HF_ENDPOINT", hub.endpoint), ("HF_HUB_OFFLINE", "0"),
               ("HF_HUB_DISABLE_TELEMETRY", "1"), ("THREEDFY_DOWNLOADS", str(tmp_path / "downloads")))
        own = EngineClient(EngineConfig(python=sys.executable, root=str(REPO), device="cpu", env=env))
        try:
            result, messages = run(own.segment(image, tmp_path / "m.png", [[20.0, 9.0]], [1], sam=spec,
                                               sam_size="tiny"))
            downloads = [m.payload["fraction"] for m in messages
                         if m.kind == "progress" and m.payload["stage"] == "download"]
            assert downloads and downloads[-1] == 1.0 and downloads == sorted(downloads)
            assert any(r["method"] == "GET" and r["path"].endswith("sam_tiny.pth") for r in hub.requests("hub"))
            fetched = list((tmp_path / "downloads").rglob("sam_tiny.pth"))
            assert len(fetched) == 1 and fetched[0].read_bytes() == tiny_file.read_bytes()
            expected, _ = predictor_mask(load_sam(tiny_file, variant="tiny"), image, [[20.0, 9.0]], [1])
            np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), np.where(expected, 255, 0))
            assert result["cached"] is False
        finally:
            own.stop()


# -- in the process -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", ["load", "embed"])
def test_cancel_is_checked_between_loading_embedding_and_predicting(tmp_path, stop_after):
    image = picture(tmp_path / "p.png", 30, 44, seed=81)
    out = tmp_path / "m.png"
    request = SegmentRequest.from_payload({"image": str(image), "out": str(out), "points": clicks(1, 30, 44, 82),
                                           "labels": [1], "sam": TINY})
    session = SegmentSession("cpu")
    cancel = threading.Event()
    stages = []

    def progress(stage: str, fraction: float) -> None:
        stages.append(stage)
        if stage == stop_after and fraction == 1.0:
            cancel.set()

    with pytest.raises(Cancelled):
        session.segment(request, progress, cancel)
    assert stages[-1] == stop_after and "write" not in stages and not out.exists()
    assert session.loaded  # what was loaded is kept for the next request
    assert session.segment(request)["cached"] is (stop_after == "embed")
    session.release()
    assert not session.loaded


def test_typed_segment_commands_become_requests():
    line = "segment '/tmp/my photo.png' /tmp/m.png 10,20 30.5,40,0 box=1,2,30,40 sam=random:tiny multimask"
    assert parse_text(line, "t1") == Message("segment", {
        "id": "t1", "image": "/tmp/my photo.png", "out": "/tmp/m.png", "points": [[10.0, 20.0], [30.5, 40.0]],
        "labels": [1, 0], "box": [1.0, 2.0, 30.0, 40.0], "multimask": True, "sam": "random:tiny"})
    with pytest.raises(ProtocolError, match="cannot read 'ten,20'"):
        parse_text("segment a.png m.png ten,20", "t2")
    with pytest.raises(ProtocolError, match="segment IMAGE OUT"):
        parse_text("segment a.png", "t3")
