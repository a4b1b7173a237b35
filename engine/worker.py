"""The engine worker: `python -m engine.worker`, run by the client (client.py) with the extension root as cwd.

It speaks the protocol (protocol.py) on stdin/stdout and nothing else there: at start it moves the real stdout to
a private handle and points file descriptor 1 at stderr, so stray prints from libraries cannot corrupt the stream.
Requests run one at a time on a job thread; the main thread keeps reading stdin, so `cancel` arrives while a
request runs. SIGINT cancels the running request (a second one, or one while idle, exits).

The pipeline is loaded lazily on the first `reconstruct`, kept for the next one when the job says `keep_loaded`,
and reloaded when the weights, preset, device or precision change. It comes from `open_pipeline` (which wraps
`engine.pipeline.Pipeline.from_source`); tests may substitute a factory with its signature by naming it in
THREEDFY_PIPELINE_FACTORY="module:function" (the only hook; unset in normal use). SAM is loaded on the first
`segment` and kept, with the embeddings of the last pictures, by a `SegmentSession` (segment.py); `release` (and
an out-of-memory error) frees the pipeline and SAM together.

    python -m engine.worker [--device auto] [--dtype auto] [--text]

When stdin closes (the client is gone) the running request is cancelled and the worker exits; in text mode end
piped commands with `quit`, which waits for the queued requests.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from .errors import Cancelled, EngineError, OutOfMemoryError
from .protocol import KEEPALIVE_S, PROTOCOL_VERSION, Message, ProtocolError, decode, encode, format_text, parse_text

PIPELINE_FACTORY_ENV = "THREEDFY_PIPELINE_FACTORY"
_OOM_HINT = ("Try quality 'fast', precision float16, or close other programs that use the GPU; "
             "the engine restarts to give all memory back.")


class Channel:
    """The protocol stream (JSON lines, or text lines with --text); thread-safe."""

    def __init__(self, stream, text: bool):
        self._stream = stream
        self._text = text
        self._lock = threading.Lock()

    def send(self, message_kind: str, /, **payload) -> None:
        """Send one message; `payload` may itself have a `kind` field (errors do)."""
        message = Message(message_kind, payload)
        line = format_text(message) if self._text else encode(message_kind, payload)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # the client is gone; stdin's EOF ends the worker


class Worker:
    """Runs requests from a queue on one job thread; holds the pipeline between requests."""

    def __init__(self, channel: Channel, device: str, dtype: str):
        self.channel = channel
        self.device = device
        self.dtype = dtype
        self._requests: queue.Queue = queue.Queue()
        self._pipeline = None
        self._pipeline_key: tuple | None = None
        self._segmenter = None  # segment.SegmentSession, made on the first `segment`
        self._current: tuple[str, threading.Event] | None = None
        self._cancelled_ids: set[str] = set()
        self._latest_progress: dict | None = None
        self._lock = threading.RLock()  # re-entrant: the SIGINT handler may run while the main thread holds it
        self._thread = threading.Thread(target=self._run, daemon=True, name="3dfy-job")
        self._thread.start()
        threading.Thread(target=self._keepalive, daemon=True, name="3dfy-keepalive").start()

    # -- main thread -------------------------------------------------------------------------------------------

    def handle(self, message: Message) -> bool:
        """Take one incoming message; False when the worker should stop reading (shutdown)."""
        rid = message.payload.get("id")
        if message.kind == "cancel":
            self.cancel(rid)
        elif message.kind == "status":
            self.channel.send("result", id=rid, **self.handshake())
            self.channel.send("done", id=rid)
        elif message.kind in ("reconstruct", "segment", "release", "shutdown"):
            self._requests.put(message)
            return message.kind != "shutdown"
        else:
            self.channel.send("error", id=rid, kind="bad_input", message=f"A worker does not take {message.kind!r}.",
                              hint="Send one of: reconstruct, segment, status, release, shutdown, cancel.",
                              traceback="")
            self.channel.send("done", id=rid)
        return True

    def cancel(self, rid: str | None = None) -> bool:
        """Cancel request `rid` (None: the running one); True if it was running and not yet asked to stop."""
        with self._lock:
            if self._current is not None and rid in (None, self._current[0]):
                already = self._current[1].is_set()
                self._current[1].set()
                return not already
            if rid is not None:
                self._cancelled_ids.add(rid)
        return False

    def wait_idle(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- job thread --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            message = self._requests.get()
            rid = message.payload.get("id")
            if message.kind == "shutdown":
                self._unload()
                self.channel.send("done", id=rid)
                return
            cancel = threading.Event()
            with self._lock:
                if rid in self._cancelled_ids:
                    cancel.set()
                self._current = (rid, cancel)
            try:
                if cancel.is_set():
                    raise Cancelled("Cancelled before it started.")
                if message.kind == "reconstruct":
                    payload = self._reconstruct(rid, message.payload, cancel)
                elif message.kind == "segment":
                    payload = self._segment(rid, message.payload, cancel)
                else:
                    self._unload()
                    payload = {"vram_free": _device_memory(self.device)[0]}
                self.channel.send("result", id=rid, **payload)
            except Cancelled as exc:
                self.channel.send("cancelled", id=rid, message=exc.message or "Cancelled.")
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the client as data
                self.channel.send("error", id=rid, **self._error_payload(exc))
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
            finally:
                with self._lock:
                    self._current = None
                    self._latest_progress = None
                self.channel.send("done", id=rid)

    def _reconstruct(self, rid: str, payload: dict, cancel: threading.Event) -> dict:
        from . import jobs  # numpy: imported only once the environment check passed

        started = time.perf_counter()
        job = jobs.read_job(payload.get("job", ""))
        settings = job.settings
        progress = self._progress_reporter(rid)
        progress("load", 0.0)
        pipeline = self._load(settings, progress)
        progress("load", 1.0)
        if cancel.is_set():
            raise Cancelled("Cancelled.")
        result = pipeline.reconstruct(
            job.image, job.masks, pointmap=job.pointmap, intrinsics=job.intrinsics, seed=settings.seed,
            quality=settings.quality, outputs=tuple(settings.outputs), progress=progress, cancel=cancel,
        )
        if cancel.is_set():
            raise Cancelled("Cancelled.")
        progress("write", 0.0)
        weights = _weights_info(pipeline, settings.weights)
        jobs.write_result(job.folder, result.objects, weights=weights, seconds=time.perf_counter() - started,
                          camera=_camera_info(result))
        progress("write", 1.0)
        if not settings.keep_loaded:
            self._unload()
        return {"job": str(job.folder), "objects": len(result.objects), "weights": weights,
                "seconds": round(time.perf_counter() - started, 3)}

    def _segment(self, rid: str, payload: dict, cancel: threading.Event) -> dict:
        from .segment import SegmentRequest, SegmentSession  # torch: imported only once the environment check passed

        request = SegmentRequest.from_payload(payload)
        if self._segmenter is None:
            self._segmenter = SegmentSession(_resolve_device(self.device), self.dtype)
        return self._segmenter.segment(request, self._progress_reporter(rid), cancel)

    def _load(self, settings, progress):
        key = (settings.weights, settings.preset, self.device, self.dtype, settings.keep_loaded)
        if self._pipeline is None or self._pipeline_key != key:
            self._unload()
            factory = _pipeline_factory()
            self._pipeline = factory(settings.weights, preset=settings.preset, device=self.device, dtype=self.dtype,
                                     keep_loaded=settings.keep_loaded, progress=progress)
            self._pipeline_key = key
        return self._pipeline

    def _unload(self) -> None:
        self._pipeline = None
        self._pipeline_key = None
        if self._segmenter is not None:
            self._segmenter.release()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _progress_reporter(self, rid: str):
        last = {"stage": None, "fraction": -1.0, "at": 0.0}

        def report(stage: str, fraction: float) -> None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            now = time.monotonic()
            with self._lock:
                self._latest_progress = {"id": rid, "stage": str(stage), "fraction": fraction}
            if stage != last["stage"] or fraction - last["fraction"] >= 0.01 or now - last["at"] >= 0.5 \
                    or fraction >= 1.0:
                last.update(stage=stage, fraction=fraction, at=now)
                self.channel.send("progress", id=rid, stage=str(stage), fraction=fraction)

        return report

    def _keepalive(self) -> None:
        while True:
            time.sleep(KEEPALIVE_S)
            with self._lock:
                latest = dict(self._latest_progress) if self._latest_progress else None
            if latest is not None:
                self.channel.send("progress", **latest)

    def _error_payload(self, exc: BaseException) -> dict:
        if isinstance(exc, OutOfMemoryError):
            self._unload()
            return {"kind": exc.kind, "message": exc.message, "hint": exc.hint or _OOM_HINT, "traceback": ""}
        if isinstance(exc, EngineError):
            return {"kind": exc.kind, "message": exc.message, "hint": exc.hint, "traceback": ""}
        text = traceback.format_exc()
        if _is_out_of_memory(exc):
            self._unload()
            return {"kind": "out_of_memory", "message": f"The {self.device} device ran out of memory.",
                    "hint": _OOM_HINT, "traceback": text}
        print(text, file=sys.stderr, flush=True)
        return {"kind": "internal", "message": f"The engine failed: {type(exc).__name__}: {exc}"[:500],
                "hint": "This is a bug in 3Dfy's engine; the engine log has the details. Running again may help.",
                "traceback": text}

    # -- handshake ---------------------------------------------------------------------------------------------

    def handshake(self) -> dict:
        import numpy
        import torch

        device = _resolve_device(self.device)
        free, total = _device_memory(device)
        name = platform.processor() or platform.machine()
        if device.startswith("cuda"):
            name = torch.cuda.get_device_name(torch.device(device))
        return {
            "protocol": PROTOCOL_VERSION, "engine": _engine_version(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "device": device, "device_name": name,
            "vram_free": free, "vram_total": total, "pid": os.getpid(),
        }


# ------------------------------------------------------------------------------------------------------------------
# Helpers


def open_pipeline(weights: str, preset: str, device: str, dtype: str, keep_loaded: bool, progress):
    """The real pipeline for a weights source; `progress(stage, fraction)` hears about downloads."""
    from .pipeline import DEFAULT_DEPTH_WEIGHTS, Pipeline

    options = {}
    if weights != "random":
        def download(name: str, done: int, total: int | None) -> None:
            progress("download", done / total if total else 0.0)

        options["progress"] = download
    return Pipeline.from_source(weights, preset, device=device, dtype=dtype, keep_loaded=keep_loaded,
                                depth_weights="random" if weights == "random" else DEFAULT_DEPTH_WEIGHTS, **options)


def _pipeline_factory():
    spec = os.environ.get(PIPELINE_FACTORY_ENV)
    if spec:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr or "create")
    return open_pipeline


def _weights_info(pipeline, source: str) -> dict:
    """{source, id, revision} for the objects' custom properties, from the pipeline's `weights_id` when it has one
    ("hf:REPO@COMMIT", a folder, "random:PRESET:SEED")."""
    identity = str(getattr(pipeline, "weights_id", "") or source)
    if identity.startswith("hf:"):
        repo, _, revision = identity[3:].partition("@")
        return {"source": source, "id": repo, "revision": revision or "main"}
    if identity.startswith("random"):
        return {"source": source, "id": identity, "revision": ""}
    return {"source": source, "id": Path(identity).name or identity, "revision": ""}


def _camera_info(result) -> dict:
    """How the engine saw the picture (when the pipeline says): intrinsics, image size, pointmap source."""
    info = {}
    if getattr(result, "intrinsics", None) is not None:
        info["intrinsics"] = [[float(v) for v in row] for row in result.intrinsics]
    if getattr(result, "image_size", None) is not None:
        info["image_size"] = [int(v) for v in result.image_size]
    if getattr(result, "pointmap_source", None):
        info["pointmap_source"] = str(result.pointmap_source)
    return info


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _device_memory(device: str) -> tuple[int | None, int | None]:
    torch = sys.modules.get("torch")
    if torch is None:
        return None, None
    device = _resolve_device(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), int(total)
    return None, None


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _engine_version() -> str:
    manifest = Path(__file__).resolve().parents[1] / "blender_manifest.toml"
    try:
        import tomllib

        with open(manifest, "rb") as f:
            return str(tomllib.load(f).get("version", "unknown"))
    except (OSError, ValueError, ImportError):
        return "unknown"


def _check_environment() -> str | None:
    """None when the engine's requirements import, else the reason."""
    for module in ("numpy", "torch"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{module} cannot be imported ({exc})"
    return None


def _protocol_stream():
    """Keep the real stdout for the protocol; everything else that writes to fd 1 or sys.stdout lands in stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    stream = os.fdopen(protocol_fd, "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr
    return stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu | mps")
    parser.add_argument("--dtype", default="auto", help="auto | float16 | bfloat16 | float32")
    parser.add_argument("--text", action="store_true", help="human-readable messages and typed commands")
    args = parser.parse_args(argv)

    channel = Channel(_protocol_stream(), text=args.text)
    problem = _check_environment()
    if problem is not None:
        channel.send("error", id=None, kind="engine_missing",
                     message=f"The engine's Python ({sys.executable}) is incomplete: {problem}.",
                     hint="Reinstall the engine in Preferences > Add-ons > 3Dfy, or choose a Python that has "
                          "engine/requirements.txt installed.", traceback="")
        return 3

    worker = Worker(channel, args.device, args.dtype)
    channel.send("ready", **worker.handshake())

    def on_interrupt(signum, frame):
        # First interrupt during a request: cancel it. A second one for the same request, or one while idle: exit.
        if not worker.cancel(None):
            print("3dfy worker: interrupted, exiting", file=sys.stderr, flush=True)
            os._exit(130)
        print("3dfy worker: interrupted: cancelling the running request (again to exit)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_interrupt)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, on_interrupt)

    counter = 0
    for line in sys.stdin:
        counter += 1
        try:
            message = parse_text(line, f"t{counter}") if args.text else decode(line)
        except ProtocolError as exc:
            print(f"3dfy worker: {exc}", file=sys.stderr, flush=True)
            continue
        if message is None:
            continue
        if not worker.handle(message):
            worker.wait_idle(timeout=None)
            return 0
    # stdin closed: the client is gone. Stop what runs and leave.
    worker.cancel(None)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # daemon threads may be inside torch; do not wait for them
