"""3Dfy's preferences: the engine environment, the weights, the device, and run defaults.

Kept in Blender's user preferences, never in a .blend (the Hugging Face token in particular). Operators read them
through `operators/session.py`, which turns them into the engine client's configuration.
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..scene.properties import QUALITY_ITEMS

__all__ = ["THREEDFY_AddonPreferences"]


class THREEDFY_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__.rpartition(".")[0]

    engine_source: EnumProperty(
        name="Engine", default="INSTALLED",
        items=(("INSTALLED", "Installed by 3Dfy", "An environment that 3Dfy installs in its user folder"),
               ("PYTHON", "Use this Python", "A Python that already has the engine's requirements (torch...)")))
    python_path: StringProperty(name="Python", subtype="FILE_PATH",
                                description="Interpreter of an environment with engine/requirements.txt installed")
    weights_source: EnumProperty(
        name="Weights", default="HF",
        items=(("HF", "Hugging Face", "Download the official weights (gated: request access, then give a token)"),
               ("FOLDER", "Local Folder", "A folder holding the release (pipeline.yaml and the .ckpt files)"),
               ("CUSTOM", "Engine Source", "Any source the engine takes: a folder, hf:REPO[@REV], or 'random'")))
    hf_repo: StringProperty(name="Repository", default="facebook/sam-3d-objects")
    hf_revision: StringProperty(name="Revision", default="", description="Branch, tag or commit (empty: main)")
    hf_token: StringProperty(name="Token", subtype="PASSWORD",
                             description="A Hugging Face read token with access to the repository. Kept in the "
                                         "preferences only, never in a .blend; passed to the engine in its "
                                         "environment")
    weights_folder: StringProperty(name="Folder", subtype="DIR_PATH")
    weights_custom: StringProperty(name="Source", default="random")
    preset: EnumProperty(name="Model", default="official",
                         items=(("official", "Official", "The released model's size"),
                                ("tiny", "Tiny", "A small configuration for tests (with random weights)")))
    device: EnumProperty(name="Device", default="auto",
                         items=(("auto", "Automatic", "The GPU when there is one, else the CPU"),
                                ("cuda", "CUDA GPU", "The first NVIDIA GPU"), ("cpu", "CPU", "Slow, but always there"),
                                ("mps", "Apple GPU", "Metal Performance Shaders")))
    precision: EnumProperty(name="Precision", default="auto",
                            items=(("auto", "Automatic", "bfloat16 or float16 on GPUs, float32 on the CPU"),
                                   ("float16", "Half (float16)", "Least memory"),
                                   ("bfloat16", "BFloat16", "Least memory, on recent GPUs"),
                                   ("float32", "Full (float32)", "Most memory")))
    keep_loaded: BoolProperty(name="Keep Engine Loaded", default=True,
                              description="Keep the model in GPU memory between runs (faster; Release GPU frees it)")
    default_quality: EnumProperty(name="Default Quality", items=QUALITY_ITEMS, default="default")

    # Segment Anything, for click-to-segment masks (runs in the same engine process).
    sam_source: EnumProperty(
        name="Segment Anything", default="FILE",
        items=(("FILE", "Local File", "A checkpoint of the segment-anything release (sam_vit_b/l/h .pth)"),
               ("HF", "Hugging Face", "A copy of a release checkpoint in a Hugging Face repository"),
               ("CUSTOM", "Engine Source", "Any source the engine takes, e.g. random:tiny (random weights, tests)")))
    sam_size: EnumProperty(
        name="Size", default="vit_b",
        items=(("vit_b", "ViT-B", "The smallest and fastest (0.4 GB)"),
               ("vit_l", "ViT-L", "Larger (1.2 GB)"),
               ("vit_h", "ViT-H", "The largest and most accurate (2.6 GB)")),
        description="Which release checkpoint to fetch from Hugging Face")
    sam_file: StringProperty(name="Checkpoint", subtype="FILE_PATH",
                             description="sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth")
    sam_hf_repo: StringProperty(name="Repository", default="",
                                description="OWNER/NAME of a Hugging Face repository holding the checkpoint")
    sam_hf_revision: StringProperty(name="Revision", default="", description="Branch, tag or commit (empty: main)")
    sam_hf_file: StringProperty(name="File", default="",
                                description="Path of the checkpoint in the repository (empty: the release's name "
                                            "for the chosen size)")
    sam_custom: StringProperty(name="Source", default="random:tiny")

    def draw(self, context):
        from ..operators import engine_install, session

        layout = self.layout
        box = layout.box()
        box.label(text="Engine", icon="SETTINGS")
        box.row().prop(self, "engine_source", expand=True)
        if self.engine_source == "PYTHON":
            box.prop(self, "python_path")
        else:
            python = session.installed_python()
            row = box.row()
            if python.exists():
                row.label(text=f"Installed: {python}", icon="CHECKMARK")
            else:
                row.label(text="Not installed yet", icon="ERROR")
            row = box.row()
            row.operator("threedfy.install_engine", icon="IMPORT")
            row.operator("threedfy.open_log", icon="TEXT", text="Install Log").which = "INSTALL"
            install = engine_install.current_install()
            if install is not None:
                label, fraction = install.progress
                box.progress(text=label, factor=fraction)
        row = box.row()
        row.operator("threedfy.check_engine", icon="PLAY")
        row.operator("threedfy.release_gpu", icon="UNLINKED")
        row.operator("threedfy.open_log", icon="TEXT", text="Engine Log").which = "ENGINE"
        box.prop(self, "device")
        box.prop(self, "precision")
        box.prop(self, "keep_loaded")

        box = layout.box()
        box.label(text="Weights", icon="FILE_BLEND")
        box.row().prop(self, "weights_source", expand=True)
        if self.weights_source == "HF":
            box.prop(self, "hf_repo")
            box.prop(self, "hf_revision")
            box.prop(self, "hf_token")
            if not bpy.app.online_access:
                box.label(text="Online access is off: only weights downloaded before can be used", icon="INFO")
        elif self.weights_source == "FOLDER":
            box.prop(self, "weights_folder")
        else:
            box.prop(self, "weights_custom")
            box.prop(self, "preset")

        layout.prop(self, "default_quality")

        box = layout.box()
        box.label(text="Segment Anything (click-to-segment masks)", icon="RESTRICT_SELECT_OFF")
        box.row().prop(self, "sam_source", expand=True)
        if self.sam_source == "FILE":
            box.prop(self, "sam_file")
        elif self.sam_source == "HF":
            box.prop(self, "sam_hf_repo")
            box.row().prop(self, "sam_size", expand=True)
            box.prop(self, "sam_hf_file", placeholder=session.SAM_FILES[self.sam_size])
            box.prop(self, "sam_hf_revision")
        else:
            box.prop(self, "sam_custom")
