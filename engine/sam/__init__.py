"""Segment Anything (the first SAM release, ViT-B/L/H): clicks and boxes on a picture -> object masks.

`load_sam(spec)` reads a public `sam_vit_{b,l,h}_*.pth` (a path or an `hf:` file spec); `SamPredictor(model)`
caches the picture's embedding (`set_image`) and answers prompts (`predict`) as segment-anything's SamPredictor.
"""
from .model import PRESETS, Sam, SamConfig
from .predictor import SamPrediction, SamPredictor
from .weights import PUBLIC_FILES, load_sam, random_sam, resolve_sam_file

__all__ = ["PRESETS", "PUBLIC_FILES", "Sam", "SamConfig", "SamPrediction", "SamPredictor", "load_sam", "random_sam",
           "resolve_sam_file"]
