"""3Dfy engine: SAM 3D Objects in plain PyTorch. Never imports bpy.

Modules use relative imports so the package works both as `engine` (worker, CLI, tests) and as a
subpackage of the Blender extension (where only `client` and `protocol` are imported, without torch).
"""
