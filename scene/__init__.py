"""The scene layer: bpy + numpy, no UI. Engine results become meshes, materials, images, collections and poses."""
