"""Install Engine: a virtual environment made from Blender's own Python, plus pip of the engine's requirements.

The plan is a list of commands (`install_plan`, pure, tested): create the venv, install the torch build that
fits the machine (CUDA wheels when an NVIDIA driver is present, else CPU), install engine/requirements.txt,
check the result. `CommandSequence` runs them one after the other in subprocesses, appends everything they print
to a log file, and reports (step label, fraction). The operator drives it like every other: blocking in
`execute`, a timer in the UI, ESC cancels. Network use only when Blender's online access allows it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import bpy

from . import session

__all__ = ["Step", "install_plan", "torch_build", "nvidia_driver_version", "CommandSequence", "current_install",
           "THREEDFY_OT_install_engine", "classes"]

TORCH_INDEX = "https://download.pytorch.org/whl/{}"
# (minimum NVIDIA driver major version, PyTorch wheel variant), newest first.
CUDA_BUILDS = ((570, "cu128"), (560, "cu126"))

_install: CommandSequence | None = None


@dataclass(frozen=True)
class Step:
    label: str  # shown to the artist
    argv: tuple[str, ...]


def torch_build(driver_version: str | None, system: str) -> tuple[str, str | None]:
    """(description, pip index URL or None for PyPI) of the torch build for this machine."""
    if driver_version:
        try:
            major = int(driver_version.split(".")[0])
        except ValueError:
            major = 0
        for minimum, variant in CUDA_BUILDS:
            if major >= minimum:
                return f"CUDA ({variant})", TORCH_INDEX.format(variant)
    if system == "Darwin":
        return "CPU / Apple GPU", None
    return "CPU", TORCH_INDEX.format("cpu")


def install_plan(base_python: str, env_dir: Path, requirements: Path, driver_version: str | None,
                 system: str) -> list[Step]:
    """The commands that make the engine environment in `env_dir` from `base_python` (Blender's)."""
    python = str(env_dir / "Scripts" / "python.exe") if system == "Windows" else str(env_dir / "bin" / "python")
    torch_pin = next((line.strip() for line in requirements.read_text().splitlines()
                      if re.match(r"\s*torch\s*==", line)), "torch")
    description, index = torch_build(driver_version, system)
    torch_args = ("--index-url", index) if index else ()
    pip = (python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input")
    return [
        Step("Creating the environment", (base_python, "-m", "venv", str(env_dir))),
        Step(f"Installing PyTorch, {description}", (*pip, torch_pin, *torch_args)),
        Step("Installing the engine's requirements", (*pip, "-r", str(requirements))),
        Step("Checking the engine", (python, "-c", "import numpy, torch; print('torch', torch.__version__, "
                                                   "'cuda' if torch.cuda.is_available() else 'cpu')")),
    ]


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's version from nvidia-smi, or None when there is no NVIDIA GPU (or no nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


class CommandSequence:
    """Runs steps one after the other; poll() from any loop. Not thread-safe: one caller."""

    def __init__(self, steps: list[Step], log_path: Path):
        self.steps = steps
        self.log_path = log_path
        self.index = -1
        self.error: str | None = None
        self.cancelled = False
        self._proc: subprocess.Popen | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self._reader: threading.Thread | None = None

    @property
    def finished(self) -> bool:
        return self.cancelled or self.error is not None or self.index >= len(self.steps)

    @property
    def progress(self) -> tuple[str, float]:
        """(label: the step and its latest output line, fraction of all steps)."""
        if self.index < 0:
            return "Starting", 0.0
        if self.index >= len(self.steps):
            return "Done", 1.0
        last = self._tail[-1].strip() if self._tail else ""
        label = self.steps[self.index].label + (f": {last[:60]}" if last else "")
        return label, self.index / len(self.steps)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as f:
            f.write(f"3Dfy engine install, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._next()

    def poll(self) -> bool:
        """Advance; True when all steps ran, one failed, or it was cancelled."""
        if self.finished or self._proc is None:
            return self.finished
        code = self._proc.poll()
        if code is None:
            return False
        self._reader.join()
        if self.cancelled:
            return True
        if code != 0:
            step = self.steps[self.index]
            last = next((line.strip() for line in reversed(self._tail) if line.strip()), "")
            self.error = f"'{step.label}' failed (exit code {code})" + (f": {last[:200]}" if last else "")
            return True
        self._next()
        return self.finished

    def cancel(self) -> None:
        self.cancelled = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def wait(self, interval: float = 0.2) -> None:
        while not self.poll():
            time.sleep(interval)

    def _next(self) -> None:
        self.index += 1
        if self.index >= len(self.steps):
            self._log("---- done")
            return
        step = self.steps[self.index]
        self._log(f"---- {step.label}: {' '.join(step.argv)}")
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        env["PYTHONNOUSERSITE"] = "1"
        try:
            self._proc = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          encoding="utf-8", errors="replace", env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.error = f"'{step.label}' could not start ({exc.strerror}: {step.argv[0]})"
            self._log(self.error)
            return
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in proc.stdout:
                self._tail.append(line.rstrip("\n"))
                log.write(line)
                log.flush()

    def _log(self, line: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def current_install() -> CommandSequence | None:
    return _install if _install is not None and not _install.finished else None


def install_log_path() -> Path:
    return session.user_dir("logs") / "install.log"


class THREEDFY_OT_install_engine(bpy.types.Operator):
    """Make the engine's Python environment in 3Dfy's user folder (downloads PyTorch and the engine's
    requirements, a few GB)"""

    bl_idname = "threedfy.install_engine"
    bl_label = "Install Engine"

    _timer = None

    @classmethod
    def poll(cls, context):
        if not bpy.app.online_access:
            cls.poll_message_set("Online access is off: allow it in Preferences > System > Network, "
                                 "or choose 'Use this Python'")
            return False
        if current_install() is not None:
            cls.poll_message_set("The engine is being installed")
            return False
        return True

    def execute(self, context):
        sequence = self._start(context)
        try:
            sequence.wait()
        except KeyboardInterrupt:
            sequence.cancel()
            sequence.wait()
        return self._finish(context, sequence)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        self._sequence = self._start(context)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._sequence.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        state = context.window_manager.threedfy_run
        done = self._sequence.poll()
        state.stage, state.fraction = self._sequence.progress
        for area in context.screen.areas:
            area.tag_redraw()
        if not done:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(context, self._sequence)

    def _start(self, context) -> CommandSequence:
        global _install
        import platform

        session.shutdown()  # the old worker may hold files of the environment being replaced
        root = session.EXTENSION_ROOT
        steps = install_plan(session.blender_python(), session.installed_python().parents[1],
                             root / "engine" / "requirements.txt", nvidia_driver_version(), platform.system())
        _install = CommandSequence(steps, install_log_path())
        _install.start()
        return _install

    def _finish(self, context, sequence: CommandSequence) -> set[str]:
        if sequence.cancelled:
            self.report({"INFO"}, "Engine install cancelled; press Install Engine again to finish it")
            return {"CANCELLED"}
        if sequence.error:
            self.report({"ERROR"}, f"Engine install: {sequence.error}. The install log is {sequence.log_path}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Engine installed in {session.installed_python().parents[1]}")
        return {"FINISHED"}


classes = (THREEDFY_OT_install_engine,)
