"""3Dfy a folder of pictures from the command line, with the extension installed and enabled in Blender:

    blender -b scene.blend --python scripts/batch_folder.py -- PHOTOS_DIR [--quality fast] [--seed 0] [--save]
            [--log-dir DIR] [--origin-at-base]

Every `NAME.png` with masks `NAME_mask*.png` becomes a collection "3Dfy NAME" placed through the scene camera;
a JSON log per picture goes to PHOTOS_DIR/3dfy_log (or --log-dir). Run it again after an interruption: finished
pictures are skipped. --save saves the .blend after each picture. Exit status 1 when a picture failed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import bpy


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="blender -b FILE --python batch_folder.py --")
    parser.add_argument("folder")
    parser.add_argument("--quality", choices=("fast", "default", "high"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir")
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--origin-at-base", action="store_true")
    args = parser.parse_args(argv)
    module = next((name for name in bpy.context.preferences.addons.keys() if name.endswith(".threedfy")), None)
    if module is None:
        print("error: the 3Dfy extension is not enabled in this Blender (install and enable it first)",
              file=sys.stderr)
        return 2
    api = importlib.import_module(f"{module}.api")
    counts = api.reconstruct_folder(args.folder, log_dir=args.log_dir, camera=bpy.context.scene.camera,
                                    quality=args.quality, seed=args.seed, origin_at_base=args.origin_at_base,
                                    save=args.save)
    print("3Dfy folder: " + ", ".join(f"{value} {key}" for key, value in counts.items()))
    return 1 if counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []))
