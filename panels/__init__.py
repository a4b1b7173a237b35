"""UI: the 3Dfy sidebars (3D Viewport, Image Editor) and the add-on preferences."""
