"""From a resolved config to the objects a run is made of: the dataset and the method.

The engine, checkpoints (``load_run``), evaluation and benchmarks all build through here, so a
run is rebuilt exactly as it was trained. Arrows point one way: this module knows data, backbones
and methods; nothing here knows the engine.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import methods as method_registry
from .backbones import build_backbone
from .errors import UserError


def load_dataset_for(cfg: dict[str, Any]):
    """The run's dataset, decoded (or read from the cache) as the ``data`` section says."""
    from .data import load_data

    d = cfg["data"]
    return load_data(d["name"], root=d["root"], image_size=d["image_size"], subset=d["subset"],
                     test_subset=d["test_subset"], test_fraction=d["test_fraction"], split_seed=d["split_seed"])


def data_info_of(dataset) -> dict[str, Any]:
    return {"name": dataset.name, "num_classes": dataset.num_classes, "image_size": dataset.image_size,
            "mean": tuple(dataset.mean), "std": tuple(dataset.std)}


def build_method_for(cfg: dict[str, Any], dataset=None, dataset_info: dict | None = None) -> nn.Module:
    """Backbone from the recipe's backbone section, method from its method section."""
    info = method_registry.DataInfo(**(dataset_info or data_info_of(dataset)))
    bb_cfg = dict(cfg["backbone"])
    bb_name = bb_cfg.pop("name", None)
    backbone = build_backbone(bb_name, **bb_cfg) if bb_name else None
    kwargs = {k: v for k, v in cfg["method"].items() if k != "name"}
    try:
        return method_registry.build_method(cfg["method"]["name"], backbone=backbone, data_info=info, **kwargs)
    except TypeError as exc:
        raise UserError(f"method '{cfg['method']['name']}': bad setting ({exc}); check the method section of the recipe") from None
