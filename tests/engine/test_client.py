"""The engine client (engine/client.py): queue, progress, cancel, time-outs, crash and out-of-memory recovery.

The real worker with the fake pipeline serves most tests through one shared client (a worker start imports torch);
misbehaving workers (mute, silent, of another protocol) are tiny scripts, so those tests cost no torch import.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from engine import jobs
from engine.client import EngineClient, EngineConfig, RemoteError
from engine.errors import Cancelled
from engine.protocol import PROTOCOL_VERSION
from tests.paths import REPO

FAKE_ENV = (("THREEDFY_PIPELINE_FACTORY", "tests.engine.fake_pipeline:create"), ("PYTHONPATH", str(REPO)))


def _job(folder: Path, weights: str = "fake") -> Path:
    mask = np.zeros((32, 48), bool)
    mask[4:20, 10:30] = True
    image = np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    return jobs.write_job(folder, jobs.JobSettings(weights=weights, preset="tiny"), image, [mask])


def _wait_for_stage(request, stage: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (request.progress and request.progress[0] == stage):
        assert not request.finished, request.error
        assert time.monotonic() < deadline, f"no '{stage}' progress"
        request.pump(0.05)


def _scripted_root(tmp_path: Path, body: str) -> Path:
    """A folder whose `engine.worker` is the given script (a worker that misbehaves on purpose)."""
    root = tmp_path / "root"
    (root / "engine").mkdir(parents=True)
    (root / "engine" / "__init__.py").write_text("")
    (root / "engine" / "worker.py").write_text(textwrap.dedent("""\
        import json, signal, sys, time
        def send(kind, **payload):
            sys.stdout.write(json.dumps([kind, payload]) + "\\n"); sys.stdout.flush()
        """) + textwrap.dedent(body))
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "engine.log"
    c = EngineClient(EngineConfig(python=sys.executable, root=str(REPO), device="cpu", env=FAKE_ENV,
                                  log_path=str(log)))
    yield c
    c.stop()


def test_the_client_and_protocol_import_without_torch_numpy_or_bpy():
    code = "import sys, engine.client, engine.protocol; print(sorted({'torch', 'numpy', 'bpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_request_starts_the_worker_streams_progress_and_returns_the_result(client, tmp_path):
    request = client.reconstruct(_job(tmp_path / "job"))
    assert request.state == "queued" and client.alive
    messages = []
    while not request.finished:
        client.pump(0.05)
        messages += request.poll()
    assert client.info["protocol"] == PROTOCOL_VERSION and client.info["pid"] == client.pid
    kinds = [m.kind for m in messages]
    assert kinds[-1] == "result" and "progress" in kinds  # `done` settles the request; it is not handed out
    result = request.outcome()
    assert result["objects"] == 1 and Path(result["job"]) == tmp_path / "job"
    assert request.progress == ("write", 1.0)


def test_requests_queue_behind_each_other_in_one_worker(client, tmp_path):
    pid = client.start()["pid"]
    first = client.reconstruct(_job(tmp_path / "a", "fake:slow"))
    second = client.reconstruct(_job(tmp_path / "b"))
    _wait_for_stage(first, "geometry")
    assert first.state == "running" and second.state == "queued"
    assert second.wait(60)["objects"] == 1 and first.outcome()["objects"] == 1
    assert client.pid == pid


def test_cancelling_a_running_request_raises_cancelled_and_keeps_the_worker(client, tmp_path):
    pid = client.start()["pid"]
    running = client.reconstruct(_job(tmp_path / "a", "fake:slow"))
    queued = client.reconstruct(_job(tmp_path / "b"))
    queued.cancel()  # dropped at once, never sent
    assert queued.finished and queued.cancelled
    _wait_for_stage(running, "geometry")
    running.cancel()
    assert running.cancelling
    with pytest.raises(Cancelled):
        running.wait(30)
    assert client.pid == pid and not (tmp_path / "a" / "result.json").exists()
    assert client.reconstruct(_job(tmp_path / "c")).wait(60)["objects"] == 1


def test_wait_past_its_timeout_cancels_and_raises_timed_out(client, tmp_path):
    request = client.reconstruct(_job(tmp_path / "a", "fake:slow"))
    with pytest.raises(RemoteError) as info:
        request.wait(timeout=0.2)
    assert info.value.kind == "timed_out" and request.cancelled


def test_a_worker_killed_mid_run_gives_a_clear_error_and_the_next_request_restarts_it(client, tmp_path):
    pid = client.start()["pid"]
    request = client.reconstruct(_job(tmp_path / "a", "fake:slow"))
    _wait_for_stage(request, "geometry")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RemoteError) as info:
        request.wait(30)
    error = info.value
    assert error.kind == "crashed"
    assert error.message == "The engine stopped unexpectedly (killed by signal SIGKILL) during 'geometry'."
    assert "Run again" in error.hint and "engine.log" in error.hint
    assert client.reconstruct(_job(tmp_path / "b")).wait(60)["objects"] == 1
    assert client.pid != pid


def test_a_worker_that_died_while_idle_is_replaced_without_failing_the_next_request(client, tmp_path):
    pid = client.start()["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)  # no pump in between: the client has not seen it go
    assert client.reconstruct(_job(tmp_path / "a")).wait(60)["objects"] == 1
    assert client.pid != pid


def test_out_of_memory_says_what_to_do_and_the_next_request_gets_a_fresh_worker(client, tmp_path):
    pid = client.start()["pid"]
    with pytest.raises(RemoteError) as info:
        client.reconstruct(_job(tmp_path / "a", "fake:oom")).wait(30)
    assert info.value.kind == "out_of_memory" and "ran out of memory" in info.value.message
    assert "quality 'fast'" in info.value.hint
    assert not client.alive  # retired, so every byte of GPU memory is given back
    assert client.reconstruct(_job(tmp_path / "b")).wait(60)["objects"] == 1
    assert client.pid != pid


def test_an_unexpected_engine_failure_is_reported_in_one_line_and_logged_in_full(client, tmp_path):
    with pytest.raises(RemoteError) as info:
        client.reconstruct(_job(tmp_path / "a", "fake:bug")).wait(30)
    assert info.value.kind == "internal" and "\n" not in info.value.message
    assert "ValueError: index 7 is out of bounds" in info.value.message
    client.pump(0.5)  # stderr is written by a reader thread
    log = Path(client.config.log_path).read_text()
    assert "engine worker starting" in log and 'fake_pipeline.py", line' in log


def test_release_asks_the_worker_to_free_memory_and_needs_no_worker_when_none_runs(client, tmp_path):
    client.start()
    assert "vram_free" in client.release().wait(30)
    idle = EngineClient(EngineConfig(python=sys.executable, root=str(REPO)))
    assert idle.release() is None and not idle.alive


def test_a_cancel_the_engine_ignores_escalates_to_sigint_then_kill(tmp_path):
    root = _scripted_root(tmp_path, f"""\
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        send("ready", protocol={PROTOCOL_VERSION}, pid=0)
        for line in sys.stdin:
            kind, payload = json.loads(line)
            if kind == "reconstruct":
                send("progress", id=payload["id"], stage="geometry", fraction=0.1)
                time.sleep(60)
        """)
    c = EngineClient(EngineConfig(python=sys.executable, root=str(root), cancel_grace=0.3, kill_grace=0.3))
    request = c.reconstruct(tmp_path)
    _wait_for_stage(request, "geometry", timeout=30)
    started = time.monotonic()
    request.cancel()
    with pytest.raises(Cancelled, match="the engine was stopped"):
        request.wait(30)
    assert request._interrupt_at is not None and time.monotonic() - started < 10
    assert not c.alive


def test_a_worker_that_goes_silent_is_stopped_after_the_stall_timeout(tmp_path):
    root = _scripted_root(tmp_path, f"""\
        send("ready", protocol={PROTOCOL_VERSION}, pid=0)
        for line in sys.stdin:
            time.sleep(60)
        """)
    c = EngineClient(EngineConfig(python=sys.executable, root=str(root), stall_timeout=0.5))
    with pytest.raises(RemoteError) as info:
        c.reconstruct(tmp_path).wait(30)
    assert info.value.kind == "timed_out"
    assert info.value.message == "The engine sent nothing for 0.5 s and was stopped." and not c.alive


def test_a_worker_that_never_says_ready_times_out_at_start(tmp_path):
    root = _scripted_root(tmp_path, "time.sleep(60)\n")
    c = EngineClient(EngineConfig(python=sys.executable, root=str(root), start_timeout=0.5))
    with pytest.raises(RemoteError) as info:
        c.start(timeout=30)
    assert info.value.kind == "timed_out" and "did not start within" in info.value.message


def test_a_worker_of_another_protocol_version_is_refused(tmp_path):
    root = _scripted_root(tmp_path, 'send("ready", protocol=99, pid=0)\nsys.stdin.read()\n')
    c = EngineClient(EngineConfig(python=sys.executable, root=str(root)))
    with pytest.raises(RemoteError) as info:
        c.start(timeout=30)
    assert info.value.kind == "protocol" and "protocol 99" in info.value.message
    assert "Reinstall the engine" in info.value.hint


def test_no_engine_python_or_one_without_torch_says_how_to_install_the_engine(tmp_path):
    missing = EngineClient(EngineConfig(python=str(tmp_path / "no-env" / "bin" / "python"), root=str(REPO)))
    with pytest.raises(RemoteError) as info:
        missing.start(timeout=30)
    assert info.value.kind == "engine_missing" and "cannot be started" in info.value.message
    assert "Install the engine" in info.value.hint
    bare = tmp_path / "python-without-site-packages"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    without_torch = EngineClient(EngineConfig(python=str(bare), root=str(REPO)))
    with pytest.raises(RemoteError) as info:
        without_torch.start(timeout=30)
    assert info.value.kind == "engine_missing" and "cannot be imported" in info.value.message
    assert "Reinstall the engine" in info.value.hint
