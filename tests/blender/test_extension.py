"""The extension as Blender sees it: built and validated by Blender's tool, installed, enabled, registered."""
from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

import bpy

from tests.paths import REPO


def test_the_built_zip_holds_the_extension_and_not_the_repository_around_it(threedfy):
    names = set(zipfile.ZipFile(threedfy.zip_path).namelist())
    assert {"blender_manifest.toml", "__init__.py", "api.py", "engine/worker.py", "engine/client.py",
            "engine/protocol.py", "engine/requirements.txt", "scene/build.py", "operators/reconstruct.py",
            "panels/sidebar.py"} <= names
    assert not any(n.startswith(("tests/", "scripts/", ".venv/", ".git/", "docs/")) for n in names)
    assert not any("__pycache__" in n for n in names)


def test_the_manifest_follows_blenders_schema_and_lists_exactly_the_wheels_in_wheels(threedfy):
    manifest = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert manifest["id"] == "threedfy" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0" and manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["permissions"]) == {"network", "files"}
    assert all(0 < len(reason) <= 64 and not reason.endswith(".") for reason in manifest["permissions"].values())
    listed = {Path(w).name for w in manifest.get("wheels", [])}
    assert listed == {p.name for p in (REPO / "wheels").glob("*.whl")}


def test_enabling_registers_the_operators_panels_and_properties(threedfy):
    assert threedfy.module_name in bpy.context.preferences.addons
    for idname in ("reconstruct_selection", "cancel", "add_masks", "remove_mask", "install_engine", "check_engine",
                   "release_gpu", "reconstruct_folder", "open_preferences"):
        assert hasattr(bpy.ops.threedfy, idname), idname
    assert hasattr(bpy.types, "THREEDFY_PT_view3d") and hasattr(bpy.types, "THREEDFY_PT_image")
    assert bpy.context.scene.threedfy.quality == "PREFERENCES"
    assert bpy.context.window_manager.threedfy_run.running is False
    assert threedfy.prefs.hf_repo == "facebook/sam-3d-objects"


def test_the_hugging_face_token_is_a_preference_and_never_saved_in_a_blend(threedfy, tmp_path):
    threedfy.prefs.weights_source = "HF"
    threedfy.prefs.hf_token = "hf_secret_token_123"
    path = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    assert b"hf_secret_token_123" not in path.read_bytes()
    config = threedfy.session.engine_config()
    assert ("HF_TOKEN", "hf_secret_token_123") in config.env and "hf_secret" not in repr(config)
