"""The Blender session's engine: one client (one worker process) shared by every operator and the API.

Turns the add-on preferences into an `EngineConfig`, `JobSettings` and the Segment Anything model spec, finds the
user folders (engine environment, job folders, logs), and lists the predictable problems that stop a run (no
engine, no weights, no SAM model) with the fix for each, for operators to report and panels to show with a button.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bpy

from ..engine.client import EngineClient, EngineConfig
from ..engine.errors import EngineError
from ..engine.jobs import JobSettings

__all__ = ["ADDON", "EXTENSION_ROOT", "SAM_FILES", "Problem", "SetupError", "preferences", "user_dir",
           "installed_python", "engine_python", "engine_config", "job_settings", "sam_spec", "sam_size", "client",
           "shutdown", "problems", "sam_problems", "new_job_folder"]

ADDON = __package__.rpartition(".")[0]  # the extension's module name, e.g. bl_ext.user_default.threedfy
EXTENSION_ROOT = Path(__file__).resolve().parents[1]  # holds the `engine` package: the worker's cwd
KEEP_JOBS = 5  # finished job folders kept for inspection (`python -m engine.jobs dump`)
# The segment-anything release's checkpoint per size (what a Hugging Face copy of it is usually called).
SAM_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}

_client: EngineClient | None = None


class SetupError(EngineError):
    """Something to set up before a run (engine, weights); `fix` names an operator that helps."""

    kind = "setup"

    def __init__(self, message: str, hint: str = "", fix: str = "", fix_label: str = ""):
        super().__init__(message, hint)
        self.fix = fix
        self.fix_label = fix_label


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str
    fix: str = ""  # operator idname
    fix_label: str = ""

    def error(self) -> SetupError:
        return SetupError(self.message, self.hint, self.fix, self.fix_label)


def preferences():
    """The add-on preferences (THREEDFY_AddonPreferences)."""
    return bpy.context.preferences.addons[ADDON].preferences


def user_dir(*parts: str) -> Path:
    """A folder in the extension's user data (kept across updates), created if missing."""
    try:
        base = Path(bpy.utils.extension_path_user(ADDON, create=True))
    except ValueError:  # not running as an installed extension (e.g. a development checkout as a legacy add-on)
        base = Path(tempfile.gettempdir()) / "threedfy"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def installed_python() -> Path:
    """Where the environment that 3Dfy installs keeps its interpreter (it may not exist yet)."""
    env = user_dir() / "engine-env"
    return env / "Scripts" / "python.exe" if os.name == "nt" else env / "bin" / "python"


def engine_python(prefs=None) -> str:
    prefs = prefs or preferences()
    if prefs.engine_source == "PYTHON":
        return bpy.path.abspath(prefs.python_path) if prefs.python_path else ""
    return str(installed_python())


def weights_source(prefs=None) -> str:
    """The engine's weights source string for the preferences: a folder, hf:REPO[@REV], or anything custom."""
    prefs = prefs or preferences()
    if prefs.weights_source == "HF":
        revision = prefs.hf_revision.strip()
        return f"hf:{prefs.hf_repo.strip()}" + (f"@{revision}" if revision else "")
    if prefs.weights_source == "FOLDER":
        return bpy.path.abspath(prefs.weights_folder).rstrip("/\\") if prefs.weights_folder else ""
    return prefs.weights_custom.strip()


def sam_spec(prefs=None) -> str:
    """The engine's Segment Anything source for the preferences: a checkpoint file, hf:OWNER/NAME[@REV]/FILE,
    or anything the engine takes (random:tiny for tests)."""
    prefs = prefs or preferences()
    if prefs.sam_source == "FILE":
        return bpy.path.abspath(prefs.sam_file) if prefs.sam_file else ""
    if prefs.sam_source == "HF":
        repo, revision = prefs.sam_hf_repo.strip().strip("/"), prefs.sam_hf_revision.strip()
        if not repo:
            return ""
        path = prefs.sam_hf_file.strip().lstrip("/") or SAM_FILES[prefs.sam_size]
        return f"hf:{repo}" + (f"@{revision}" if revision else "") + f"/{path}"
    return prefs.sam_custom.strip()


def sam_size(prefs=None) -> str | None:
    """The size the SAM weights must be, when the preferences fetch a file by size (None: read from the weights)."""
    prefs = prefs or preferences()
    return prefs.sam_size if prefs.sam_source == "HF" and not prefs.sam_hf_file.strip() else None


def engine_config(prefs=None) -> EngineConfig:
    prefs = prefs or preferences()
    env = []
    if prefs.hf_token and (prefs.weights_source == "HF" or prefs.sam_source == "HF"):
        env.append(("HF_TOKEN", prefs.hf_token))
    if not bpy.app.online_access:
        env.append(("HF_HUB_OFFLINE", "1"))
    return EngineConfig(python=engine_python(prefs), root=str(EXTENSION_ROOT), device=prefs.device,
                        dtype=prefs.precision, env=tuple(env), log_path=str(user_dir("logs") / "engine.log"))


def job_settings(seed: int, quality: str, prefs=None) -> JobSettings:
    prefs = prefs or preferences()
    preset = prefs.preset if prefs.weights_source == "CUSTOM" else "official"
    return JobSettings(weights=weights_source(prefs), preset=preset, seed=int(seed), quality=quality,
                       outputs=("mesh",), keep_loaded=prefs.keep_loaded)


def client(prefs=None) -> EngineClient:
    """The session's client for the current preferences. A changed configuration replaces the client (and its
    worker) when it is idle; a busy one keeps serving until its requests are done."""
    global _client
    config = engine_config(prefs)
    if _client is None:
        _client = EngineClient(config)
    elif _client.config != config and not _client.busy:
        _client.stop()
        _client = EngineClient(config)
    return _client


def current_client() -> EngineClient | None:
    """The client if one was made (no worker is started by asking)."""
    return _client


def shutdown() -> None:
    """Stop the worker (at unregister)."""
    global _client
    if _client is not None:
        _client.stop()
        _client = None


def problems(prefs=None, weights: bool = True) -> list[Problem]:
    """What stops a run before it starts, each with what to do about it (`weights`: check the weights too)."""
    prefs = prefs or preferences()
    found = []
    python = engine_python(prefs)
    if not python or not Path(python).exists():
        if prefs.engine_source == "PYTHON":
            found.append(Problem(
                f"The engine's Python '{python or '(none)'}' does not exist",
                "Choose an interpreter that has the engine's requirements, or switch to 'Installed by 3Dfy'",
                "threedfy.open_preferences", "Preferences"))
        else:
            found.append(Problem(
                "The 3Dfy engine is not installed",
                "Press Install Engine in Preferences > Add-ons > 3Dfy, or choose an existing Python there",
                "threedfy.open_preferences", "Install Engine"))
    source = weights_source(prefs)
    if not weights:
        pass
    elif prefs.weights_source == "FOLDER":
        if not source:
            found.append(Problem("No weights folder is set", "Choose the release folder in the preferences, or use "
                                 "Hugging Face", "threedfy.open_preferences", "Preferences"))
        elif not Path(source).is_dir():
            found.append(Problem(f"The weights folder '{source}' does not exist",
                                 "Choose the folder of the downloaded release in the preferences, or use Hugging Face",
                                 "threedfy.open_preferences", "Preferences"))
    elif not source or source in ("hf:", "hf:@"):
        found.append(Problem("No weights source is set", "Set the weights in the preferences",
                             "threedfy.open_preferences", "Preferences"))
    return found


def sam_problems(prefs=None) -> list[Problem]:
    """What stops click-to-segment before it starts: the engine problems, then a missing SAM model."""
    prefs = prefs or preferences()
    found = problems(prefs, weights=False)
    spec = sam_spec(prefs)
    if not spec:
        found.append(Problem("No Segment Anything model is set",
                             "Choose the SAM checkpoint (sam_vit_b/l/h .pth) in the preferences",
                             "threedfy.open_preferences", "Preferences"))
    elif prefs.sam_source == "FILE" and not Path(spec).is_file():
        found.append(Problem(f"The SAM checkpoint '{spec}' does not exist",
                             "Download sam_vit_b_01ec64.pth (or _l / _h) from the segment-anything release and "
                             "choose it in the preferences", "threedfy.open_preferences", "Preferences"))
    return found


def new_job_folder() -> Path:
    """A fresh folder for one job's files; the oldest finished ones beyond KEEP_JOBS are deleted."""
    jobs = user_dir("jobs")
    existing = sorted((p for p in jobs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in existing[:max(0, len(existing) - KEEP_JOBS)]:
        shutil.rmtree(old, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = jobs / f"{stamp}-{os.getpid()}-{time.monotonic_ns() % 1_000_000:06d}"
    folder.mkdir()
    return folder


def blender_python() -> str:
    """Blender's own interpreter (the base of the installed engine environment)."""
    return sys.executable
