"""The config tree on disk (configs/): where it is, its presets and groups. Light on purpose
(no JAX): ``difftre --help`` and the Hydra error messages read it before anything heavy loads."""
from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def presets() -> list[str]:
    """The presets, ``config=NAME`` (configs/config/NAME.yaml)."""
    return sorted(p.stem for p in (CONFIG_DIR / "config").glob("*.yaml"))


def groups() -> list[str]:
    """The config groups, the folders of configs/ (``group=option``)."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "config")
