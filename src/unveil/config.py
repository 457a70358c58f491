"""Recipes are data: a YAML file, defaults underneath, dotted overrides on top.

``resolve(recipe, overrides)`` returns a plain nested dict; ``validate`` checks it once, at the
edge, with messages that name the field. The resolved config is saved beside every run.
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError, require

DEFAULTS: dict[str, Any] = {
    "method": {"name": "simclr"},  # every other key is passed to the method's constructor
    "backbone": {"name": "resnet18", "cifar_stem": True},
    "data": {
        "name": "cifar10",  # a registered name, an image folder, or a folder of Parquet files
        "root": None,  # where registered datasets live (default: $UNVEIL_DATA or ~/.cache/unveil/data)
        "image_size": None,  # decode size; None = the dataset's native size (folders: 64)
        "subset": None,  # use only this many training images (stratified, seeded)
        "test_subset": None,  # evaluate on only this many test images
        "test_fraction": 0.2,  # for folders without a test split
        "split_seed": 0,
    },
    "train": {
        "epochs": 10,  # 0 saves the initial weights: a random-init baseline to evaluate
        "max_steps": None,  # stop early after this many optimizer steps (budgeted runs)
        "batch_size": 256,
        "optimizer": "sgd",  # sgd | lars | adamw | adam
        "lr": 0.06,  # base lr for a batch of 256: actual = lr * global_batch / 256 when scale_lr
        "scale_lr": True,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "betas": [0.9, 0.999],
        "schedule": "cosine",  # cosine | constant | cosine_epoch (per-epoch steps, as the AE repos)
        "warmup_epochs": 0.0,
        "min_lr": 0.0,
        "precision": "auto",  # auto | bf16 | fp32
        "channels_last": True,
        "compile": False,
        "device": "auto",  # auto | cpu | cuda
        "seed": 0,
        "ckpt_every_steps": 0,  # 0 = only at the end of each epoch
        "log_every_steps": 10,
        "monitor": "knn",  # knn | classify | none : evaluated at the end of each epoch
        "monitor_every_epochs": 1,
        "knn_k": 200,
        "knn_t": 0.1,
        "monitor_train_size": 10000,
        "monitor_test_size": 5000,
        "init_backbone": None,  # safetensors/ckpt with backbone weights to start from (fine-tuning)
        "freeze_backbone": False,  # linear probing through the engine
        "progress": True,
    },
    "out": None,  # run directory; default runs/<method>-<data>-<timestamp>
}

_OPEN_SECTIONS = ("method", "backbone")  # free-form keys go to constructors


def recipes_dir() -> Path:
    return Path(str(importlib.resources.files("unveil") / "recipes"))


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(recipe: str | Path | None) -> dict[str, Any]:
    """Read a recipe by shipped name (``simclr_cifar10``) or path."""
    if recipe is None:
        return {}
    path = Path(recipe)
    if not path.suffix:
        path = recipes_dir() / f"{recipe}.yaml"
    if not path.is_file():
        raise UserError(
            f"recipe '{recipe}' not found: give a YAML path or one of {', '.join(available_recipes())}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    require(isinstance(data, dict), f"recipe {path} must be a mapping of sections (method, data, train, ...)")
    return data


def merge(base: dict, new: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in new.items():
        name = f"{where}{key}"
        if key not in out and where.split(".")[0] not in _OPEN_SECTIONS:
            known = ", ".join(sorted(out))
            raise UserError(f"unknown setting '{name}': known settings here are {known}")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, f"{name}.")
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", "method.temperature=0.2"]`` -> nested dict, values parsed as YAML."""
    for item in overrides:
        require("=" in item, f"override '{item}' must look like section.key=value (e.g. train.epochs=5)")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot parse overrides {overrides}: {exc}") from None


def resolve(recipe: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict[str, Any]:
    """Defaults <- recipe <- overrides, then validated."""
    cfg = merge(DEFAULTS, load_recipe(recipe))
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        cfg = merge(cfg, extra)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Range checks, once, naming the field."""
    t = cfg["train"]

    def positive_int(name: str, value: Any, minimum: int = 1) -> None:
        require(
            isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"{name} must be {'a positive' if minimum else 'a non-negative'} integer, got {value!r}",
        )

    positive_int("train.epochs", t["epochs"], minimum=0)  # 0: keep the initial weights (random-init baseline)
    positive_int("train.batch_size", t["batch_size"])
    if t["max_steps"] is not None:
        positive_int("train.max_steps", t["max_steps"])
    require(isinstance(t["lr"], (int, float)) and t["lr"] > 0, f"train.lr must be > 0, got {t['lr']!r}")
    require(t["weight_decay"] >= 0, f"train.weight_decay must be >= 0, got {t['weight_decay']!r}")
    require(0 <= t["momentum"] < 1, f"train.momentum must be in [0, 1), got {t['momentum']!r}")
    require(t["warmup_epochs"] >= 0, f"train.warmup_epochs must be >= 0, got {t['warmup_epochs']!r}")
    choices = {
        "optimizer": ("sgd", "lars", "adamw", "adam"),
        "schedule": ("cosine", "constant", "cosine_epoch"),
        "precision": ("auto", "bf16", "fp32"),
        "device": ("auto", "cpu", "cuda"),
        "monitor": ("knn", "classify", "none"),
    }
    for key, allowed in choices.items():
        require(t[key] in allowed, f"train.{key} must be one of {', '.join(allowed)}, got {t[key]!r}")
    positive_int("train.knn_k", t["knn_k"])
    require(t["knn_t"] > 0, f"train.knn_t must be > 0, got {t['knn_t']!r}")
    require(t["ckpt_every_steps"] >= 0, "train.ckpt_every_steps must be >= 0 (0 = each epoch only)")
    d = cfg["data"]
    require(bool(d["name"]), "data.name is empty: give --data cifar10|cifar100|fashion-mnist|stl10 or a folder")
    require(0 < d["test_fraction"] < 1, f"data.test_fraction must be in (0, 1), got {d['test_fraction']!r}")
    for key in ("image_size", "subset", "test_subset"):
        if d[key] is not None:
            positive_int(f"data.{key}", d[key])
    require(isinstance(cfg["method"].get("name"), str), "method.name must be set (e.g. simclr)")


def save_resolved(cfg: dict[str, Any], path: Path) -> None:
    """Write the resolved config atomically (temp file, then rename)."""
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
