"""MoGe v1 monocular geometry (pointmap + camera from one RGB image), as SAM 3D Objects uses it."""
