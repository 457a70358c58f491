"""Checkpoint I/O. Written atomically; read with ``weights_only=True`` (nothing is unpickled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..build import backbone_config, build_method_for, load_dataset_for
from ..config import load_yaml
from ..errors import UserError, require
from ..io import atomic_write, tensor_bytes

CKPT_NAME = "last.ckpt"
CONFIG_NAME = "config.yaml"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a full disk leaves the previous checkpoint as it was and says so in one line."""
    path = Path(path)
    if path.is_file():
        advice = f"; the previous {path.name} is intact: continue with `unveil pretrain --resume {path.parent}`"
    else:
        advice = "; nothing was saved yet: run again once there is room"
    atomic_write(path, lambda tmp: torch.save(state, tmp), needed=tensor_bytes(state), advice=advice)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    require(path.is_file(), f"checkpoint {path} not found: give a run directory or a .ckpt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or not ours
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}): it is damaged or not an unveil checkpoint") from None


def resolve_run(path: str | Path) -> tuple[Path, Path]:
    """Accept a run directory or a checkpoint file; return (run_dir, ckpt_path)."""
    path = Path(path)
    require(path.exists(), f"'{path}' does not exist: give a run directory (with {CKPT_NAME}) or a .ckpt file")
    if path.is_dir():
        ckpt = path / CKPT_NAME
        require(ckpt.is_file(), f"{path} has no {CKPT_NAME}: is it a run directory of 'unveil pretrain'?")
        return path, ckpt
    return path.parent, path


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_NAME
    require(path.is_file(), f"{run_dir} has no {CONFIG_NAME}: is it a run directory of 'unveil pretrain'?")
    return load_yaml(path.read_text())


def load_run(path: str | Path, load_data: bool = True, device: str | torch.device = "cpu"):
    """Rebuild a trained method from a run directory or checkpoint, in eval mode.

    Returns ``(method, cfg, dataset)``; ``dataset`` is None when ``load_data`` is False.
    """
    run_dir, ckpt_path = resolve_run(path)
    state = load_checkpoint(ckpt_path)
    cfg = state.get("config") or read_config(run_dir)
    if state.get("data_info"):  # backbone.cifar_stem: auto -> what this run trained with
        cfg = {**cfg, "backbone": backbone_config(cfg["backbone"], state["data_info"]["image_size"])[0]}
    dataset = load_dataset_for(cfg) if load_data else None
    method = build_method_for(cfg, dataset_info=state.get("data_info"))
    method.load_state_dict(state["model"])
    return method.to(device).eval(), cfg, dataset
