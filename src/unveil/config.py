"""Recipes are data: a YAML file, defaults underneath, dotted overrides on top.

``resolve(recipe, overrides)`` returns a plain nested dict; ``validate`` checks it once, at the
edge, with messages that name the field. The resolved config is saved beside every run.
"""

from __future__ import annotations

import copy
import importlib.resources
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError, require

DEFAULTS: dict[str, Any] = {
    "method": {"name": "simclr"},  # every other key is passed to the method's constructor
    # cifar_stem auto: the 3x3/1 stem without max-pool for images of 32 px or less, the standard
    # 7x7/2 + max-pool stem above (the CIFAR stem at 64 px costs ~8x the compute)
    "backbone": {"name": "resnet18", "cifar_stem": "auto"},
    "data": {
        "name": "cifar10",  # a registered name, an image folder, or a folder of Parquet files
        "root": None,  # where registered datasets live (default: $UNVEIL_DATA or ~/.cache/unveil/data)
        "image_size": None,  # decode size; None = the dataset's native size (folders: 64)
        "subset": None,  # use only this many training images (stratified, seeded)
        "test_subset": None,  # evaluate on only this many test images
        "test_fraction": 0.2,  # for folders without a test split
        "split_seed": 0,
        # auto: in RAM when one decoded copy per process of the node fits, else disk; memory | disk
        # (a memory-mapped uint8 cache file shared by the processes of a node through the page cache)
        "storage": "auto",
        "cache_dir": None,  # decode cache and saved splits (default: $UNVEIL_CACHE or ~/.cache/unveil/cache)
        "labels": None,  # low-shot: train on 1%, 10% or N per class of the training labels (stratified, seeded)
        "labels_seed": 0,
    },
    "train": {
        "epochs": 10,  # 0 saves the initial weights: a random-init baseline to evaluate
        "max_steps": None,  # stop early after this many optimizer steps (budgeted runs)
        "batch_size": "auto",  # auto: 256, or the largest power of two giving >= 2 steps per epoch on small data
        "optimizer": "sgd",  # sgd | lars | adamw | adam
        "lr": 0.06,  # base lr for a batch of 256: actual = lr * global_batch / 256 when scale_lr
        "scale_lr": True,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        # LARS only: the trust coefficient (eta) of the layer-wise rate eta * ||w|| / ||g + wd * w||;
        # 0.001 is LARS' / BYOL's, solo-learn's CIFAR recipes use 0.02. clip_lr caps each layer's rate
        # at the scheduled lr (min(lr, eta * ratio): NVIDIA's LARC "clip" mode, solo-learn's clip_lr)
        # instead of multiplying by it.
        "lars_trust_coefficient": 0.001,
        "lars_clip_lr": False,
        "betas": [0.9, 0.999],
        "schedule": "cosine",  # cosine | constant | cosine_epoch (per-epoch steps, as the AE repos)
        "warmup_epochs": 0.0,
        "min_lr": 0.0,
        "grad_clip_norm": None,  # clip the global gradient norm to this value (None: no clipping)
        "accumulate_steps": 1,  # split each batch into this many micro-batches (same batch, less memory)
        "precision": "auto",  # auto | bf16 | fp32
        "channels_last": True,
        "compile": False,
        "deterministic": False,  # CUDA: deterministic kernels, no autotuning (slower; bit-exact --resume)
        "prefetch_batches": 2,  # batches a background thread gathers ahead of the step (0: none)
        # several CUDA processes: BatchNorm statistics over the global batch; auto = where the method
        # asks for it (SimCLR, BYOL, MV-MAE: batch statistics are part of their loss), never on CPU
        "sync_batchnorm": "auto",
        "device": "auto",  # auto | cpu | cuda
        "seed": 0,
        "ckpt_every_steps": 0,  # 0 = only at the end of each epoch
        "log_every_steps": 10,
        "monitor": "knn",  # knn | classify | none : evaluated at the end of each epoch
        "monitor_every_epochs": 1,
        "knn_k": 200,
        "knn_t": 0.1,
        # kNN bank / query sizes; auto keeps the monitor near 5-10 % of an epoch (see train.monitor)
        "monitor_train_size": "auto",
        "monitor_test_size": "auto",
        "init_backbone": None,  # safetensors/ckpt with backbone weights to start from (fine-tuning)
        "freeze_backbone": False,  # linear probing through the engine
        "progress": True,
    },
    "out": None,  # run directory; default runs/<method>-<data>-<timestamp>
}

_OPEN_SECTIONS = ("method", "backbone")  # free-form keys go to constructors


class _Loader(yaml.SafeLoader):
    """YAML with the numbers people write: ``1e-4`` and ``3e-2`` are floats (YAML 1.1, and so
    PyYAML's safe loader, reads a float without a dot as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse recipe / suite / run-config YAML (numbers such as ``5e-4`` read as floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def recipes_dir() -> Path:
    return Path(str(importlib.resources.files("unveil") / "recipes"))


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(recipe: str | Path | None, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe by shipped name (``simclr_cifar10``) or path.

    ``base: other_recipe`` at its top merges it on top of that recipe (recursively: mappings are
    merged key by key, anything else replaces), so a study's steps are a few lines each. A shipped
    name or a path (relative paths: from the recipe's own folder)."""
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
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    require(isinstance(data, dict), f"recipe {path} must be a mapping of sections (method, data, train, ...)")
    if "base" not in data:
        return data
    base = data.pop("base")
    require(isinstance(base, str) and bool(base), f"recipe {path}: base must be a recipe name or path, got {base!r}")
    base_path = Path(base)
    if base_path.suffix and not base_path.is_absolute():
        base_path = path.parent / base_path
    chain = (*_chain, path.resolve())
    target = (base_path if base_path.suffix else recipes_dir() / f"{base}.yaml").resolve()
    if target in chain:
        names = " -> ".join(p.stem for p in (*chain[chain.index(target):], target))
        raise UserError(f"recipe {path}: base recipes form a cycle ({names}); remove one of the base: lines")
    return _merge_recipes(load_recipe(base_path if base_path.suffix else base, chain), data)


def _merge_recipes(base: dict, new: dict) -> dict:
    """``new`` on top of ``base``: mappings merged key by key, other values (null too) replace."""
    out = copy.deepcopy(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_recipes(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


_NUMBER = (int, float)
# Expected type per field where the default alone does not say it (None defaults, numbers).
_TYPES: dict[str, tuple[type, ...]] = {
    "train.max_steps": (int, type(None)), "train.batch_size": (int, str),
    "train.lr": _NUMBER, "train.weight_decay": _NUMBER, "train.momentum": _NUMBER,
    "train.warmup_epochs": _NUMBER, "train.min_lr": _NUMBER, "train.knn_t": _NUMBER,
    "train.grad_clip_norm": (*_NUMBER, type(None)), "train.sync_batchnorm": (bool, str),
    "train.monitor_train_size": (int, str, type(None)), "train.monitor_test_size": (int, str, type(None)),
    "train.init_backbone": (str, type(None)),
    "data.root": (str, type(None)), "data.image_size": (int, type(None)), "data.subset": (int, type(None)),
    "data.test_subset": (int, type(None)), "data.test_fraction": _NUMBER, "data.cache_dir": (str, type(None)),
    "data.labels": (str, int, type(None)), "data.labels_seed": (int,),
    "out": (str, type(None)),
}


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             type(None): "null"}
    shown = [t for t in types if not (t is int and float in types)]  # "a number" covers integers
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in shown))


def _check_types(cfg: dict[str, Any]) -> None:
    """Every train/data field has the type its default has: ``train.lr: fast`` fails here, in one line."""
    for section in ("train", "data"):
        for key, default in DEFAULTS[section].items():
            name, value = f"{section}.{key}", cfg[section].get(key)
            types = _TYPES.get(name) or ((float, int) if isinstance(default, float) else (type(default),))
            if isinstance(default, list):
                types = (list,)
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            require(ok, f"{name} must be {_type_name(types)}, got {value!r} ({type(value).__name__})")
    require(isinstance(cfg.get("out"), (str, type(None))), f"out must be a folder path, got {cfg.get('out')!r}")


def validate(cfg: dict[str, Any]) -> None:
    """Types, then ranges, once, naming the field and the value."""
    _check_types(cfg)
    t = cfg["train"]

    def positive_int(name: str, value: Any, minimum: int = 1) -> None:
        require(
            isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"{name} must be {'a positive' if minimum else 'a non-negative'} integer, got {value!r}",
        )

    positive_int("train.epochs", t["epochs"], minimum=0)  # 0: keep the initial weights (random-init baseline)
    if t["batch_size"] != "auto":
        positive_int("train.batch_size", t["batch_size"])
    if t["max_steps"] is not None:
        positive_int("train.max_steps", t["max_steps"])
    require(t["lr"] > 0, f"train.lr must be > 0, got {t['lr']!r}")
    require(t["weight_decay"] >= 0, f"train.weight_decay must be >= 0, got {t['weight_decay']!r}")
    require(0 <= t["momentum"] < 1, f"train.momentum must be in [0, 1), got {t['momentum']!r}")
    require(t["lars_trust_coefficient"] > 0,
            f"train.lars_trust_coefficient must be > 0 (LARS' eta, e.g. 0.001), "
            f"got {t['lars_trust_coefficient']!r}")
    require(t["warmup_epochs"] >= 0, f"train.warmup_epochs must be >= 0, got {t['warmup_epochs']!r}")
    require(t["grad_clip_norm"] is None or t["grad_clip_norm"] > 0,
            f"train.grad_clip_norm must be > 0 (or null for no clipping), got {t['grad_clip_norm']!r}")
    positive_int("train.accumulate_steps", t["accumulate_steps"])
    require(t["batch_size"] == "auto" or t["batch_size"] % t["accumulate_steps"] == 0,
            f"train.batch_size={t['batch_size']} must be a multiple of train.accumulate_steps={t['accumulate_steps']} "
            "(each batch is split into that many micro-batches)")
    choices = {
        "optimizer": ("sgd", "lars", "adamw", "adam"),
        "schedule": ("cosine", "constant", "cosine_epoch"),
        "precision": ("auto", "bf16", "fp32"),
        "device": ("auto", "cpu", "cuda"),
        "monitor": ("knn", "classify", "none"),
    }
    for key, allowed in choices.items():
        require(t[key] in allowed, f"train.{key} must be one of {', '.join(allowed)}, got {t[key]!r}")
    for key in ("monitor_train_size", "monitor_test_size"):
        value = t[key]
        require(value in (None, "auto") or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
                f"train.{key} must be auto, null (all images) or a positive integer, got {value!r}")
    positive_int("train.knn_k", t["knn_k"])
    require(t["knn_t"] > 0, f"train.knn_t must be > 0, got {t['knn_t']!r}")
    require(t["ckpt_every_steps"] >= 0, "train.ckpt_every_steps must be >= 0 (0 = each epoch only)")
    positive_int("train.prefetch_batches", t["prefetch_batches"], minimum=0)
    require(t["sync_batchnorm"] in ("auto", True, False),
            f"train.sync_batchnorm must be auto, true or false, got {t['sync_batchnorm']!r}")
    d = cfg["data"]
    require(bool(d["name"]), "data.name is empty: give --data cifar10|cifar100|fashion-mnist|stl10 or a folder")
    require(0 < d["test_fraction"] < 1, f"data.test_fraction must be in (0, 1), got {d['test_fraction']!r}")
    require(d["storage"] in ("auto", "memory", "disk"), f"data.storage must be auto, memory or disk, got {d['storage']!r}")
    for key in ("image_size", "subset", "test_subset"):
        if d[key] is not None:
            positive_int(f"data.{key}", d[key])
    require(isinstance(cfg["method"].get("name"), str), "method.name must be set (e.g. simclr)")
    stem = cfg["backbone"].get("cifar_stem", "auto")
    require(stem in (True, False, "auto"), f"backbone.cifar_stem must be auto, true or false, got {stem!r}")


def save_resolved(cfg: dict[str, Any], path: Path) -> None:
    """Write the resolved config atomically (temp file, then rename)."""
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
