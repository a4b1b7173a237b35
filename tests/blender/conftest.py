"""Blender tests run in the `bpy` module (Blender as a Python module, Python 3.11).

Blender's user folders point into a temporary directory for the session (set before bpy is first imported), so
the tests never touch the developer's Blender configuration.

The `threedfy` fixture gives tests the extension as a user has it: built once per session with Blender's own
extension tool (scripts/build_extension), installed through `bpy.ops.extensions.package_install_files` and
enabled. Its preferences point the engine at this Python with the fake pipeline (tests/engine/fake_pipeline.py,
through THREEDFY_PIPELINE_FACTORY), so bridge tests run the real worker process in a fraction of a second. The
fixture re-enables the extension when another test reset Blender (read_factory_settings disables extensions).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.paths import REPO

if "bpy" not in sys.modules:
    _USER_RESOURCES = tempfile.mkdtemp(prefix="threedfy-blender-user-")
    os.environ["BLENDER_USER_RESOURCES"] = _USER_RESOURCES
    atexit.register(shutil.rmtree, _USER_RESOURCES, True)

bpy = pytest.importorskip("bpy")

EXTENSION_ID = "threedfy"
FAKE_FACTORY = "tests.engine.fake_pipeline:create"


@dataclass
class Extension:
    """The installed extension: its module name, the modules tests drive, and its preferences."""

    module_name: str
    zip_path: Path
    repo_module: str

    @property
    def module(self) -> ModuleType:
        return sys.modules[self.module_name]

    @property
    def api(self) -> ModuleType:
        return self.submodule("api")

    @property
    def session(self) -> ModuleType:
        return self.submodule("operators.session")

    def submodule(self, name: str) -> ModuleType:
        import importlib

        return importlib.import_module(f"{self.module_name}.{name}")

    @property
    def prefs(self):
        return bpy.context.preferences.addons[self.module_name].preferences


def build_extension(out_dir: Path) -> Path:
    out = subprocess.run(["bash", "scripts/build_extension", str(out_dir)], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=sys.executable), timeout=300)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def configure_for_fake_engine(prefs, weights: str = "fake") -> None:
    """Preferences for the bridge tests: this Python as the engine, the fake pipeline, a random tiny SAM, the CPU."""
    prefs.engine_source = "PYTHON"
    prefs.python_path = sys.executable
    prefs.weights_source = "CUSTOM"
    prefs.weights_custom = weights
    prefs.preset = "tiny"
    prefs.device = "cpu"
    prefs.precision = "auto"
    prefs.keep_loaded = True
    prefs.default_quality = "fast"
    prefs.sam_source = "CUSTOM"
    prefs.sam_custom = "random:tiny"  # Segment Anything with seeded random weights, in the real worker


@pytest.fixture(scope="session")
def _installed(tmp_path_factory) -> Extension:
    zip_path = build_extension(tmp_path_factory.mktemp("dist"))
    repo = _repository(tmp_path_factory)
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo=repo, enable_on_install=True)
    assert result == {"FINISHED"}
    extension = Extension(f"bl_ext.{repo}.{EXTENSION_ID}", zip_path, repo)
    yield extension
    if extension.module_name in sys.modules and extension.module_name in bpy.context.preferences.addons:
        extension.session.shutdown()


@pytest.fixture
def threedfy(_installed, monkeypatch) -> Extension:
    """The installed, enabled extension with the fake engine configured, on an empty scene. A worker started
    during the test runs the fake pipeline (the environment it inherits names it)."""
    import addon_utils

    monkeypatch.setenv("THREEDFY_PIPELINE_FACTORY", FAKE_FACTORY)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))

    if _installed.module_name not in bpy.context.preferences.addons:
        _ensure_repository(_installed.repo_module)
        addon_utils.enable(_installed.module_name, default_set=True)
        assert _installed.module_name in bpy.context.preferences.addons
    configure_for_fake_engine(_installed.prefs)
    bpy.ops.wm.read_homefile(use_empty=True)
    return _installed


def _repository(tmp_path_factory) -> str:
    """The extension repository to install into: Blender's user_default when it lives in this session's
    temporary user folder, else a repository of our own."""
    user_default = next(r for r in bpy.context.preferences.extensions.repos if r.module == "user_default")
    if os.environ.get("BLENDER_USER_RESOURCES") and Path(user_default.directory).is_relative_to(
            os.environ["BLENDER_USER_RESOURCES"]):
        return "user_default"
    directory = tmp_path_factory.mktemp("extensions") / "threedfy_tests"
    directory.mkdir()
    bpy.ops.preferences.extension_repo_add(name="3Dfy tests", type="LOCAL", use_custom_directory=True,
                                           custom_directory=str(directory))
    return bpy.context.preferences.extensions.repos[-1].module


def _ensure_repository(module: str) -> None:
    if any(r.module == module for r in bpy.context.preferences.extensions.repos):
        return
    raise RuntimeError(f"extension repository {module!r} vanished (Blender's preferences were reset)")
