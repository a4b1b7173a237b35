"""Where the weights layer keeps its files by default (each overridable by argument or environment).

* user data folder: `%LOCALAPPDATA%\\3Dfy` (Windows), `~/Library/Application Support/3Dfy` (macOS),
  `$XDG_DATA_HOME/3dfy` or `~/.local/share/3dfy` (Linux); `THREEDFY_DATA` overrides it.
* converted weights (`.safetensors`): `<data>/weights`, or `THREEDFY_CACHE`.
* downloads from the Hugging Face Hub: `<data>/downloads`, or `THREEDFY_DOWNLOADS`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def user_data_dir() -> Path:
    if os.environ.get("THREEDFY_DATA"):
        return Path(os.environ["THREEDFY_DATA"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "3Dfy"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "3Dfy"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "3dfy"


def default_cache_dir() -> Path:
    """Folder of converted `.safetensors` weights."""
    env = os.environ.get("THREEDFY_CACHE")
    return Path(env).expanduser() if env else user_data_dir() / "weights"


def default_download_dir() -> Path:
    """Folder of files downloaded from the Hub (with their partial downloads)."""
    env = os.environ.get("THREEDFY_DOWNLOADS")
    return Path(env).expanduser() if env else user_data_dir() / "downloads"
