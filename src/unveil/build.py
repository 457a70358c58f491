"""From a resolved config to the objects a run is made of: the dataset and the method.

The engine, checkpoints (``load_run``), evaluation and benchmarks all build through here, so a
run is rebuilt exactly as it was trained. Arrows point one way: this module knows data, backbones
and methods; nothing here knows the engine.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from . import methods as method_registry
from .backbones import build_backbone
from .errors import UserError


def load_dataset_for(cfg: dict[str, Any]):
    """The run's dataset, decoded (or read from the cache) as the ``data`` section says."""
    from .data import load_data

    d = cfg["data"]
    # processes on this node (torchrun sets it): each holds its own copy of in-memory data, so the
    # choice between RAM and the shared disk cache counts them
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return load_data(d["name"], root=d["root"], image_size=d["image_size"], subset=d["subset"],
                     test_subset=d["test_subset"], test_fraction=d["test_fraction"], split_seed=d["split_seed"],
                     cache_dir=d.get("cache_dir"), storage=d.get("storage", "auto"), local_ranks=local_ranks,
                     labels=d.get("labels"), labels_seed=d.get("labels_seed", 0))


def data_info_of(dataset) -> dict[str, Any]:
    return {"name": dataset.name, "num_classes": dataset.num_classes, "image_size": dataset.image_size,
            "mean": tuple(dataset.mean), "std": tuple(dataset.std)}


CIFAR_STEM_MAX_SIZE = 32  # the 3x3/1 stem keeps full resolution; above this, the standard 7x7/2 + max-pool


def backbone_config(backbone: dict[str, Any], image_size: int) -> tuple[dict[str, Any], str]:
    """The backbone section with ``cifar_stem: auto`` decided for ``image_size``, and why (one line).

    Auto picks the CIFAR stem for images of 32 px or less, the standard stem above (the CIFAR stem
    on 64 px images costs ~8x the compute of the standard one). Towers that only have the CIFAR
    stem (their builder defaults to it, e.g. the RR patch towers) keep it."""
    spec = dict(backbone)
    name, stem = spec.get("name"), spec.get("cifar_stem", "auto")
    if name and _takes(name, "img_size"):  # a ViT: its size and patches follow the data
        return _vit_config(spec, image_size)
    if not name or "cifar_stem" not in spec:
        return spec, ""
    if stem == "auto":
        if only_cifar_stem(name):
            spec["cifar_stem"] = True
            return spec, f"{name} has only the CIFAR stem"
        spec["cifar_stem"] = image_size <= CIFAR_STEM_MAX_SIZE
        stem = spec["cifar_stem"]
        why = (f"images are {image_size} px (<= {CIFAR_STEM_MAX_SIZE}): the CIFAR stem keeps their resolution" if stem
               else f"images are {image_size} px (> {CIFAR_STEM_MAX_SIZE}): backbone.cifar_stem=true would keep full "
               "resolution at ~8x the compute")
        return spec, f"{name} with the {'CIFAR stem (3x3/1, no max-pool)' if stem else 'standard stem (7x7/2 + max-pool)'}, auto: {why}"
    return spec, f"{name} with the {'CIFAR' if stem else 'standard'} stem (backbone.cifar_stem={str(bool(stem)).lower()})"


def only_cifar_stem(name: str) -> bool:
    """Towers whose builder defaults to the CIFAR stem (the RR patch towers) are built for it: auto keeps it."""
    import inspect

    from .backbones import backbone_builder

    param = inspect.signature(backbone_builder(name)).parameters.get("cifar_stem")
    return param is not None and param.default is True


def _takes(name: str, argument: str) -> bool:
    import inspect

    from .backbones import backbone_builder

    return argument in inspect.signature(backbone_builder(name)).parameters


def _vit_config(spec: dict[str, Any], image_size: int) -> tuple[dict[str, Any], str]:
    """A ViT's image size is the data's; ``patch_size: auto`` becomes pixels (the spec is what
    exports record, so the timm model is rebuilt from it); the CIFAR-stem default does not apply."""
    from .backbones.vit import auto_patch_size

    if spec.get("cifar_stem", "auto") != "auto":
        raise UserError(f"backbone.cifar_stem does not apply to {spec['name']} (a ViT): remove it")
    spec.pop("cifar_stem", None)
    if spec.get("img_size", "auto") in ("auto", None):
        spec["img_size"] = image_size
    if spec.get("patch_size", "auto") == "auto":
        spec["patch_size"] = auto_patch_size(int(spec["img_size"]))
    size, patch = spec["img_size"], spec["patch_size"]
    grid = f"{size // patch}x{size // patch}" if isinstance(patch, int) and patch > 0 else "?"
    return spec, f"{spec['name']} on {size} px images: {grid} patches of {patch} px (backbone.patch_size)"


def build_method_for(cfg: dict[str, Any], dataset=None, dataset_info: dict | None = None) -> nn.Module:
    """Backbone from the recipe's backbone section (stem decided for the data), method from its method section."""
    info = method_registry.DataInfo(**(dataset_info or data_info_of(dataset)))
    bb_cfg, _ = backbone_config(cfg["backbone"], info.image_size)
    bb_name = bb_cfg.pop("name", None)
    backbone = build_backbone(bb_name, **bb_cfg) if bb_name else None
    kwargs = {k: v for k, v in cfg["method"].items() if k != "name"}
    # settings are checked against the method's typed settings first (one line each); a TypeError from inside
    # the constructor is a bug and keeps its traceback
    return method_registry.build_method(cfg["method"]["name"], backbone=backbone, data_info=info, **kwargs)
