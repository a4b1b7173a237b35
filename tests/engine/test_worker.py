"""The engine worker process (`python -m engine.worker`) driven over its pipes, with the fake pipeline.

One worker serves most tests (starting one imports torch, which takes seconds on 2 cores); tests that must end a
worker start their own.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine import jobs
from engine.protocol import PROTOCOL_VERSION, Message, decode, encode
from tests.paths import REPO

FAKE = "tests.engine.fake_pipeline:create"


class WorkerProcess:
    """A worker with a thread that collects its stdout lines (every one must be protocol)."""

    def __init__(self, *args: str, python_args: tuple[str, ...] = ()):
        env = dict(os.environ, THREEDFY_PIPELINE_FACTORY=FAKE, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, *python_args, "-m", "engine.worker", *args], cwd=REPO, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1,
        )
        self.lines: queue.Queue = queue.Queue()
        self.raw: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.raw.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, kind: str, **payload) -> None:
        self.proc.stdin.write(encode(kind, payload) + "\n")
        self.proc.stdin.flush()

    def next(self, timeout: float = 60.0) -> Message:
        line = self.lines.get(timeout=timeout)
        assert line is not None, "the worker closed stdout"
        return decode(line)  # raises if a stray line reached stdout

    def until_done(self, rid: str, timeout: float = 60.0) -> list[Message]:
        messages = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            messages.append(message)
            if message.kind == "done" and message.id == rid:
                return messages

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _job(folder: Path, weights: str = "fake", masks: int = 2, **settings) -> Path:
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask_list = []
    for i in range(masks):
        mask = np.zeros((48, 64), bool)
        mask[5 + 10 * i:12 + 10 * i, 8 + 20 * i:30 + 20 * i] = True
        mask_list.append(mask)
    return jobs.write_job(folder, jobs.JobSettings(weights=weights, preset="tiny", **settings), image, mask_list)


@pytest.fixture(scope="module")
def worker():
    w = WorkerProcess()
    w.ready = w.next()  # the handshake, kept for the first test
    yield w
    w.close()


def test_the_first_message_is_the_handshake_with_versions_device_and_memory(worker):
    ready = worker.ready
    assert ready.kind == "ready"
    p = ready.payload
    assert p["protocol"] == PROTOCOL_VERSION and p["pid"] == worker.proc.pid
    assert p["device"] == "cpu" and p["vram_free"] is None and p["vram_total"] is None
    assert p["torch"] and p["numpy"] and p["python"].startswith("3.")


def test_a_reconstruct_streams_progress_then_its_result_then_done_and_writes_a_readable_result(worker, tmp_path):
    job = _job(tmp_path / "job", outputs=("mesh", "gaussians"))
    worker.send("reconstruct", id="a1", job=str(job))
    messages = worker.until_done("a1")
    assert all(m.id == "a1" for m in messages)
    kinds = [m.kind for m in messages]
    assert kinds[-2:] == ["result", "done"] and set(kinds[:-2]) == {"progress"}
    stages = [m.payload["stage"] for m in messages if m.kind == "progress"]
    assert stages[0] == "load" and stages[-1] == "write" and "geometry" in stages
    assert messages[-2].payload["objects"] == 2 and messages[-2].payload["weights"]["id"] == "fake-weights"
    result = jobs.read_result(job, mask_count=2)
    assert [o.mask_index for o in result.objects] == [0, 1]
    assert result.objects[0].texture_path is not None and result.objects[0].gaussians is not None


def test_stdout_carries_only_protocol_even_when_the_pipeline_prints(worker, tmp_path):
    job = _job(tmp_path / "job", weights="fake:chatty", masks=1)
    worker.send("reconstruct", id="c1", job=str(job))
    messages = worker.until_done("c1")  # `next` decodes every line: a stray one fails here
    assert messages[-2].kind == "result"
    assert not any("library" in line or "descriptor" in line for line in worker.raw)


def test_status_is_answered_while_a_request_runs_and_cancel_stops_it(worker, tmp_path):
    job = _job(tmp_path / "job", weights="fake:slow", masks=1)
    worker.send("reconstruct", id="s1", job=str(job))
    assert worker.next().kind == "progress"
    worker.send("status", id="s2")
    status = [m for m in worker.until_done("s2") if m.id == "s2"]  # s1's progress may come in between
    assert [m.kind for m in status] == ["result", "done"] and status[0].payload["pid"] == worker.proc.pid
    worker.send("cancel", id="s1")
    messages = worker.until_done("s1")
    assert [m.kind for m in messages][-2:] == ["cancelled", "done"]
    assert not (job / "result.json").exists()


def test_known_failures_arrive_as_data_with_a_hint_and_bugs_with_a_traceback(worker, tmp_path):
    cases = {"fake:oom": "out_of_memory", "fake:missing": "weights", "fake:bug": "internal"}
    for n, (weights, kind) in enumerate(cases.items()):
        job = _job(tmp_path / f"job{n}", weights=weights, masks=1)
        worker.send("reconstruct", id=f"e{n}", job=str(job))
        error = worker.until_done(f"e{n}")[-2]
        assert error.kind == "error" and error.payload["kind"] == kind, error
        assert error.payload["message"] and error.payload["hint"]
        assert ("Traceback" in error.payload["traceback"]) == (kind == "internal")
    worker.send("reconstruct", id="e9", job=str(tmp_path / "no such job"))
    error = worker.until_done("e9")[-2]
    assert error.payload["kind"] == "bad_job" and "job.json does not exist" in error.payload["message"]
    empty = np.zeros((48, 64), bool)
    job = jobs.write_job(tmp_path / "empty", jobs.JobSettings(weights="fake"), np.zeros((48, 64, 3), np.uint8), [empty])
    worker.send("reconstruct", id="e10", job=str(job))
    error = worker.until_done("e10")[-2]
    assert error.payload["kind"] == "bad_input" and "empty" in error.payload["message"]


def test_release_answers_with_free_memory_and_the_next_run_loads_again(worker, tmp_path):
    worker.send("release", id="g1")
    release = worker.until_done("g1")
    assert [m.kind for m in release] == ["result", "done"] and "vram_free" in release[0].payload
    worker.send("reconstruct", id="g2", job=str(_job(tmp_path / "job", masks=1)))
    assert worker.until_done("g2")[-2].kind == "result"


def test_sigint_cancels_the_running_request_and_a_second_one_ends_the_worker(worker, tmp_path):
    worker.send("reconstruct", id="i1", job=str(_job(tmp_path / "job", weights="fake:slow", masks=1)))
    assert worker.next().kind == "progress"
    worker.proc.send_signal(signal.SIGINT)
    messages = worker.until_done("i1")
    assert messages[-2].kind == "cancelled"
    worker.send("reconstruct", id="i2", job=str(_job(tmp_path / "job2", weights="fake:stubborn", masks=1)))
    while worker.next().payload.get("stage") != "geometry":
        pass
    worker.proc.send_signal(signal.SIGINT)  # cancel: ignored by the stubborn pipeline
    time.sleep(0.3)
    worker.proc.send_signal(signal.SIGINT)  # second: exit now
    assert worker.proc.wait(10) == 130


def test_text_mode_takes_typed_commands_and_quit_exits_after_the_queued_work(tmp_path):
    env = dict(os.environ, THREEDFY_PIPELINE_FACTORY=FAKE, PYTHONPATH=str(REPO))
    job = _job(tmp_path / "job", masks=1)
    out = subprocess.run([sys.executable, "-m", "engine.worker", "--text"], cwd=REPO, env=env, text=True,
                         input=f"status\nreconstruct {job}\nnonsense\nquit\n", capture_output=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ready ") and f"protocol={PROTOCOL_VERSION}" in lines[0]
    assert any(line.split()[:3] == ["progress", "t2", "geometry"] for line in lines)
    assert any(line.startswith("result     t2") and "objects=1" in line for line in lines)
    assert lines[-1].split() == ["done", "t4"]  # quit (t3 was the nonsense line) waits for t2 to finish
    assert "commands: reconstruct JOB_DIR" in out.stderr and out.returncode == 0


def test_an_environment_without_torch_reports_itself_and_exits():
    # -S: no site-packages, so neither numpy nor torch imports (as in a Python that is not the engine's).
    out = subprocess.run([sys.executable, "-S", "-m", "engine.worker"], cwd=REPO, text=True, capture_output=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 3
    (line,) = out.stdout.splitlines()
    message = decode(line)
    assert message.kind == "error" and message.id is None and message.payload["kind"] == "engine_missing"
    assert "cannot be imported" in message.payload["message"] and "Preferences" in message.payload["hint"]
