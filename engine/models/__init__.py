"""The networks of SAM 3D Objects. Math only: no sampling loops, seeds, device moves or file I/O."""
