"""Backbone weights read from an exported .safetensors file or from a run, and loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..build import build_method_for
from ..errors import UserError, require
from ..methods.base import Method
from .checkpoint import load_run


def read_safetensors(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (unless ``tensors=False``) and metadata of a .safetensors file, in one open."""
    require(path.is_file(), f"exported weights '{path}' not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
            return state, dict(f.metadata() or {})
    except Exception as exc:
        raise UserError(f"cannot read {path} as safetensors ({type(exc).__name__}): is the file complete?") from None


def read_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Backbone weights from an exported .safetensors file or an unveil checkpoint/run directory."""
    path = Path(path)
    require(path.exists(), f"weights '{path}' not found: give an exported .safetensors file or a run directory")
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    method, _, _ = load_run(path, load_data=False)  # the method knows which module is its backbone
    return {k: v.detach().contiguous() for k, v in method.backbone.state_dict().items()}


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load exported safetensors (or an unveil checkpoint) into a backbone, strictly."""
    state = read_backbone_state(path)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    require(not missing and not unexpected,
            f"weights in {path} do not fit this backbone (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}): "
            "use the same backbone settings as the pretraining run")


def build_untrained(cfg: dict[str, Any], data_info: dict[str, Any]) -> Method:
    """The method with the weights its training run started from: built under the run's seed, as the engine
    builds it, with ``train.init_backbone``'s weights when the run had them (momentum targets restarted).

    The one builder of "the untrained encoder" that every baseline (kNN, linear, fine-tune, activation maps)
    stands beside."""
    torch.manual_seed(cfg["train"]["seed"])
    method = build_method_for(cfg, dataset_info=data_info)
    if cfg["train"].get("init_backbone"):
        load_backbone_weights(method.backbone, cfg["train"]["init_backbone"])
        method.reset_targets()
    return method
