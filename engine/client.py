"""The engine client: runs the engine worker in its own process and talks to it (protocol.py).

One `EngineClient` per Blender session owns at most one worker process. Requests are queued and sent one at a
time; the worker is started on the first request (and again after it crashed, ran out of memory or was stopped).
All state changes happen in `pump()`, on the caller's thread: two reader threads only move the worker's stdout
lines into a queue and its stderr into the engine log. That keeps the client usable from Blender's main thread
(a modal timer pumps) and from blocking scripts (`Request.wait` pumps), with no bpy and no torch here.

    client = EngineClient(EngineConfig(python="/path/to/engine-env/bin/python", root="/path/to/extension"))
    request = client.reconstruct(job_dir)          # queued; the worker starts if needed
    request.wait(timeout=None)                     # blocks, pumping; returns the result payload
    client.segment(picture, mask_png, [[x, y]], [1], sam=spec).wait()   # {out, score, area, bbox, size, cached}
    # or, from a timer: request.poll() -> new messages; request.progress; request.finished; request.cancel()

Failures come back as `RemoteError` (an engine error with the protocol's `kind`, a one-line `message`, a `hint`
that says what to do, and a `traceback` for the log); a cancelled request raises `engine.errors.Cancelled`.

Stdlib only.
"""
from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Cancelled, EngineError
from .protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, encode

__all__ = ["EngineConfig", "EngineClient", "Request", "RemoteError", "worker_command"]

_LOG_LIMIT_BYTES = 5 * 1024 * 1024  # the engine log is rotated to engine.log.1 past this size, at worker start


@dataclass(frozen=True)
class EngineConfig:
    """How to run the worker. A client restarts its worker only between requests, when the config changes."""

    python: str  # the engine environment's interpreter (has torch); in tests sys.executable
    root: str  # the folder holding the `engine` package (the extension root); the worker's working directory
    device: str = "auto"  # auto | cuda | cuda:N | cpu | mps
    dtype: str = "auto"  # auto | float16 | bfloat16 | float32
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # extra environment (HF_TOKEN...), never logged
    log_path: str | None = None  # the worker's stderr is appended here
    start_timeout: float = 180.0  # seconds from spawn to the handshake (importing CUDA torch can be slow)
    stall_timeout: float = 900.0  # seconds without any message during a request before the worker is stopped
    cancel_grace: float = 10.0  # seconds a cooperative cancel may take before SIGINT
    kill_grace: float = 5.0  # seconds after SIGINT (or a shutdown request) before the process is killed


class RemoteError(EngineError):
    """A failure reported by the worker, or about it (crashed, timed out, not installed)."""

    def __init__(self, kind: str, message: str, hint: str = "", traceback: str = ""):
        super().__init__(message, hint)
        self.kind = kind
        self.traceback = traceback


def worker_command(config: EngineConfig) -> list[str]:
    """The command line that starts a worker for `config` (run with cwd = config.root)."""
    return [config.python, "-u", "-m", "engine.worker", "--device", config.device, "--dtype", config.dtype]


# ------------------------------------------------------------------------------------------------------------------
# Requests


class Request:
    """One request to the worker; settled by a result, an error or a cancel. Made by `EngineClient.submit`."""

    def __init__(self, client: EngineClient, rid: str, kind: str, payload: dict):
        self.id = rid
        self.kind = kind
        self.payload = payload
        self.state = "queued"  # queued -> running -> finished
        self.progress: tuple[str, float] | None = None  # latest (stage, fraction of that stage)
        self.warnings: list[str] = []
        self.result: dict | None = None
        self.error: RemoteError | None = None
        self.cancelled = False
        self.cancel_message = ""
        self.started_at: float | None = None
        self._client = client
        self._new: list[Message] = []
        self._cancel_at: float | None = None  # when the cancel was sent
        self._interrupt_at: float | None = None  # when SIGINT was sent

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def client(self) -> EngineClient:
        return self._client

    def pump(self, timeout: float = 0.0) -> bool:
        """Pump the client (waiting up to `timeout` s for the worker); True once this request is settled."""
        if not self.finished:
            self._client.pump(timeout)
        return self.finished

    @property
    def cancelling(self) -> bool:
        return self._cancel_at is not None and not self.finished

    def poll(self) -> list[Message]:
        """Pump the client without blocking and return the messages about this request since the last poll."""
        self._client.pump()
        new, self._new = self._new, []
        return new

    def wait(self, timeout: float | None = None) -> dict:
        """Block until settled and return the result payload; raises RemoteError or Cancelled.

        Past `timeout` seconds the request is cancelled (cooperatively, then by force) and a `timed_out` error is
        raised. A KeyboardInterrupt (Ctrl+C in `blender -b`) cancels the request, waits for it, and propagates.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = False
        try:
            while not self.finished:
                if deadline is not None and not timed_out and time.monotonic() > deadline:
                    timed_out = True
                    self.cancel()
                self._client.pump(timeout=0.1)
        except KeyboardInterrupt:
            self.cancel()
            while not self.finished:
                self._client.pump(timeout=0.1)
            raise
        if timed_out and not self.error:
            raise RemoteError("timed_out", f"The engine did not finish within {timeout:g} s and was stopped.",
                              "Run again with quality 'fast', or allow more time.")
        return self.outcome()

    def outcome(self) -> dict:
        """The result payload of a finished request; raises its error, or Cancelled."""
        if not self.finished:
            raise RuntimeError(f"request {self.id} is still {self.state}")
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise Cancelled(self.cancel_message or "Cancelled.")
        return self.result or {}

    def cancel(self) -> None:
        """Ask the worker to stop this request. A queued request is dropped at once; a running one stops at its
        next check (the client escalates to SIGINT, then kill, after the grace periods)."""
        self._client._cancel(self)

    # Called by the client.
    def _receive(self, message: Message) -> None:
        self._new.append(message)
        p = message.payload
        if message.kind == "progress":
            self.progress = (str(p.get("stage", "")), float(p.get("fraction", 0.0)))
        elif message.kind == "warning":
            self.warnings.append(str(p.get("message", "")))
        elif message.kind == "result":
            self.result = {k: v for k, v in p.items() if k != "id"}
        elif message.kind == "error":
            self.error = RemoteError(str(p.get("kind", "error")), str(p.get("message", "The engine failed.")),
                                     str(p.get("hint", "")), str(p.get("traceback", "")))
        elif message.kind == "cancelled":
            self.cancelled = True
            self.cancel_message = str(p.get("message", "Cancelled."))

    def _settle(self) -> None:
        self.state = "finished"


# ------------------------------------------------------------------------------------------------------------------
# Client


class EngineClient:
    """Owns one worker process and a queue of requests. Not thread-safe: call it from one thread."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.info: dict | None = None  # the handshake (`ready` payload) of the running worker
        self._proc: subprocess.Popen | None = None
        self._generation = 0  # tags reader output, so lines of a process we gave up on are ignored
        self._lines: queue.Queue = queue.Queue()
        self._queue: deque[Request] = deque()
        self._active: Request | None = None
        self._ids = itertools.count(1)
        self._spawned_at = 0.0
        self._last_message_at = 0.0
        self._worker_error: RemoteError | None = None  # an error with a null id: why the worker is exiting
        self._stderr_tail: deque[str] = deque(maxlen=30)
        self._log_lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """A worker process is running (it may still be starting)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._queue)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def submit(self, kind: str, **payload) -> Request:
        """Queue a request (`reconstruct`, `segment`, `status`, `release`) and return it; starts the worker if
        needed."""
        if kind not in ("reconstruct", "segment", "status", "release"):
            raise ValueError(f"cannot submit {kind!r}")
        request = Request(self, f"r{next(self._ids)}", kind, payload)
        self._queue.append(request)
        self.pump()
        return request

    def reconstruct(self, job_dir: str | os.PathLike) -> Request:
        return self.submit("reconstruct", job=str(job_dir))

    def segment(
        self,
        image: str | os.PathLike,
        out: str | os.PathLike,
        points: Sequence[Sequence[float]],
        labels: Sequence[int],
        box: Sequence[float] | None = None,
        multimask: bool = False,
        sam: str | os.PathLike | None = None,
        sam_size: str | None = None,
    ) -> Request:
        """Queue a SAM segmentation of the picture file `image`; the worker writes the mask PNG `out` (8-bit grey,
        the picture's size, 255 = object) and the result is {out, score, area, bbox, size, cached}.

        `points` [[x, y], ...] and `box` [x0, y0, x1, y1] are pixels of the picture, origin at its top-left
        corner, x right, y down; `labels` has one entry per point, 1 adds and 0 removes. `multimask` keeps the
        best of SAM's three ambiguity-aware masks. `sam` is the model: a `.pth` file of the segment-anything
        release, `hf:OWNER/NAME[@REVISION]/FILE.pth` (downloaded once, with `download` progress) or
        `random:tiny` (random weights, for tests); `sam_size` ("vit_b", "vit_l", "vit_h", "tiny") checks the
        file's size, which is otherwise read from the weights. The worker keeps the model and the picture's
        embedding for the next click (`release` frees them). Bad prompts, an unreadable picture, missing weights
        and an empty mask come back as a RemoteError with a hint, and no file is written.
        """
        return self.submit(
            "segment", image=os.fspath(image), out=os.fspath(out),
            points=[[float(v) for v in point] for point in points], labels=[int(v) for v in labels],
            box=None if box is None else [float(v) for v in box], multimask=bool(multimask),
            sam=None if sam is None else os.fspath(sam), sam_size=sam_size,
        )

    def release(self) -> Request | None:
        """Free the GPU: ask the worker to unload the pipeline and SAM. None when no worker runs (nothing to free)."""
        if not self.alive:
            return None
        return self.submit("release")

    def start(self, timeout: float | None = None) -> dict:
        """Start the worker if it is not running and wait for its handshake; returns it or raises RemoteError."""
        return self.submit("status").wait(timeout)

    def pump(self, timeout: float = 0.0) -> None:
        """Process what the worker sent (waiting up to `timeout` s for the first line), enforce time limits,
        and send the next queued request when the worker is free."""
        self._dispatch()
        wait = timeout
        while True:
            try:
                generation, line = self._lines.get(timeout=wait) if wait > 0 else self._lines.get_nowait()
            except queue.Empty:
                break
            wait = 0.0
            if generation == self._generation:
                self._on_line(line)
            self._dispatch()
        self._check_deadlines()
        self._dispatch()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker (cleanly if it answers within `timeout`, default kill_grace, else killed); queued and
        running requests end as cancelled."""
        for request in list(self._queue):
            self._finish_cancelled(request, "The engine was stopped.")
        self._queue.clear()
        if self._active is not None:
            self._send("cancel", {"id": self._active.id})  # so that the shutdown behind it comes soon
            self._finish_cancelled(self._active, "The engine was stopped.")
            self._active = None
        self._retire(timeout if timeout is not None else self.config.kill_grace, wait=True)

    # -- process -----------------------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._generation += 1
        self._worker_error = None
        self.info = None
        self._stderr_tail.clear()
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)  # Blender's own Python home must not leak into the engine's interpreter
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONNOUSERSITE"] = "1"
        env.update(dict(self.config.env))
        flags = 0
        if os.name == "nt":
            flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self._open_log()
        try:
            self._proc = subprocess.Popen(
                worker_command(self.config), cwd=self.config.root, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                bufsize=1, creationflags=flags,
            )
        except OSError as exc:
            self._proc = None
            error = RemoteError(
                "engine_missing", f"The engine's Python '{self.config.python}' cannot be started ({exc.strerror}).",
                "Install the engine in Preferences > Add-ons > 3Dfy, or choose a Python that has the engine's "
                "requirements.")
            self._fail_queue(error)
            return
        self._spawned_at = self._last_message_at = time.monotonic()
        generation = self._generation
        threading.Thread(target=self._read_stdout, args=(self._proc, generation), daemon=True,
                         name="3dfy-engine-stdout").start()
        threading.Thread(target=self._read_stderr, args=(self._proc,), daemon=True,
                         name="3dfy-engine-stderr").start()

    def _read_stdout(self, proc: subprocess.Popen, generation: int) -> None:
        for line in proc.stdout:
            self._lines.put((generation, line.rstrip("\n")))
        self._lines.put((generation, None))

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            line = line.rstrip("\n")
            self._stderr_tail.append(line)
            self._log(line)

    def _retire(self, grace: float, wait: bool = False) -> None:
        """Let go of the current worker: ask it to exit, kill it after `grace` s (in the background unless
        `wait`). Its remaining output is ignored."""
        proc, self._proc = self._proc, None
        self._generation += 1
        self.info = None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write(encode("shutdown", {"id": "shutdown"}) + "\n")
            proc.stdin.flush()
            proc.stdin.close()
        except OSError:
            pass

        def reap() -> None:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        if wait:
            reap()
        else:
            threading.Thread(target=reap, daemon=True, name="3dfy-engine-reaper").start()

    def _send(self, kind: str, payload: dict) -> bool:
        try:
            self._proc.stdin.write(encode(kind, payload) + "\n")
            self._proc.stdin.flush()
            return True
        except (OSError, ValueError, AttributeError):
            return False  # the process is gone; its EOF will be handled by pump

    def _interrupt(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            self._proc.send_signal(signal.CTRL_BREAK_EVENT if os.name == "nt" else signal.SIGINT)
        except OSError:
            pass

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    # -- state machine -----------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._active is not None or not self._queue:
            return
        if self._proc is not None and self.info is not None and self._proc.poll() is not None:
            self._retire(0.0)  # it died while idle: start afresh rather than write into a dead pipe
        if self._proc is None:
            self._spawn()
            return
        if self.info is None:
            return  # still starting
        request = self._queue.popleft()
        request.state = "running"
        request.started_at = self._last_message_at = time.monotonic()
        self._active = request
        if not self._send(request.kind, {"id": request.id, **request.payload}):
            pass  # the EOF that follows settles it as crashed

    def _on_line(self, line: str | None) -> None:
        if line is None:
            self._on_exit()
            return
        self._last_message_at = time.monotonic()
        try:
            message = decode(line)
        except ProtocolError as exc:
            self._log(f"[client] ignored a line that is not protocol: {exc}")
            return
        if message.kind == "ready":
            self._on_ready(message.payload)
            return
        if message.id is None:
            if message.kind == "error":
                p = message.payload
                self._worker_error = RemoteError(str(p.get("kind", "error")), str(p.get("message", "")),
                                                 str(p.get("hint", "")), str(p.get("traceback", "")))
            return
        request = self._active
        if request is None or message.id != request.id:
            return  # about a request we already settled (e.g. a late message after a cancel)
        if message.kind == "done":
            self._active = None
            request._settle()
            if request.error is not None and request.error.kind == "out_of_memory":
                # A fresh process is the only sure way to give all GPU memory back; the next request restarts it.
                self._retire(self.config.kill_grace)
            return
        request._receive(message)

    def _on_ready(self, info: dict) -> None:
        if info.get("protocol") != PROTOCOL_VERSION:
            error = RemoteError(
                "protocol", f"The engine speaks protocol {info.get('protocol')}, this 3Dfy speaks {PROTOCOL_VERSION}.",
                "Reinstall the engine from Preferences > Add-ons > 3Dfy so that both come from the same version.")
            self._fail_queue(error)
            self._retire(self.config.kill_grace)
            return
        self.info = info

    def _on_exit(self) -> None:
        proc, self._proc = self._proc, None
        self._generation += 1
        self.info = None
        code = proc.wait() if proc is not None else None
        how = _describe_exit(code)
        tail = next((line for line in reversed(self._stderr_tail) if line.strip()), "")
        log_hint = f" The engine log is {self.config.log_path}." if self.config.log_path else ""
        request, self._active = self._active, None
        if request is not None:
            if request.finished:
                pass
            elif request._cancel_at is not None and request.error is None:
                self._finish_cancelled(request, "Cancelled; the engine was stopped and restarts on the next run.")
            else:
                if request.error is None:
                    stage = f" during '{request.progress[0]}'" if request.progress else ""
                    request.error = self._worker_error or RemoteError(
                        "crashed", f"The engine stopped unexpectedly ({how}){stage}.",
                        "Run again: the engine restarts by itself. If it happens again, choose quality 'fast' "
                        f"or a smaller precision.{log_hint}", tail)
                request._settle()
        elif self._queue and self._worker_error is None:
            # The worker died before its handshake: report why rather than restarting it in a loop.
            detail = f": {tail}" if tail else ""
            self._fail_queue(RemoteError(
                "engine_missing", f"The engine could not start ({how}){detail}",
                f"Check the engine in Preferences > Add-ons > 3Dfy (reinstall it, or pick another Python).{log_hint}"))
        if self._worker_error is not None:
            self._fail_queue(self._worker_error)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self._proc is not None and self.info is None and now - self._spawned_at > self.config.start_timeout:
            self._fail_queue(RemoteError(
                "timed_out", f"The engine did not start within {self.config.start_timeout:g} s.",
                "Check the engine in Preferences > Add-ons > 3Dfy; the engine log says where it stopped."))
            self._retire(0.0)
            return
        request = self._active
        if request is None:
            return
        if request._interrupt_at is not None and now - request._interrupt_at > self.config.kill_grace:
            self._kill()
        elif request._cancel_at is not None and request._interrupt_at is None \
                and now - request._cancel_at > self.config.cancel_grace:
            request._interrupt_at = now
            self._interrupt()
        elif now - self._last_message_at > self.config.stall_timeout and request._cancel_at is None:
            request.error = RemoteError(
                "timed_out", f"The engine sent nothing for {self.config.stall_timeout:g} s and was stopped.",
                "Run again; if it happens again, the engine log says where it hung.")
            self._kill()

    def _cancel(self, request: Request) -> None:
        if request.finished:
            return
        if request.state == "queued":
            self._queue.remove(request)
            self._finish_cancelled(request, "Cancelled before it started.")
            return
        if request._cancel_at is None:
            request._cancel_at = time.monotonic()
            self._send("cancel", {"id": request.id})

    def _finish_cancelled(self, request: Request, message: str) -> None:
        if request.finished:
            return
        request.cancelled = True
        request.cancel_message = message
        request._settle()

    def _fail_queue(self, error: RemoteError) -> None:
        while self._queue:
            request = self._queue.popleft()
            request.error = error
            request._settle()

    # -- log ----------------------------------------------------------------------------------------------------

    def _open_log(self) -> None:
        path = self.config.log_path
        if not path:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if os.path.exists(path) and os.path.getsize(path) > _LOG_LIMIT_BYTES:
                os.replace(path, path + ".1")
        except OSError:
            pass
        self._log(f"---- engine worker starting {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(worker_command(self.config))} (cwd {self.config.root})")

    def _log(self, line: str) -> None:
        if not self.config.log_path:
            return
        with self._log_lock:
            try:
                with open(self.config.log_path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError:
                pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if sys.platform == "win32" and code in (0xC0000005, -1073741819):
        return "access violation"
    return f"exit code {code}"
