"""Evaluation protocols on a run: kNN, linear probe (cached features), fine-tuning, the run's own monitor.

Each returns a metrics dict and saves it as ``eval_<kind>.json`` in the run directory, with a
``settings`` record: the protocol, every argument that changes the result, the checkpoint step and
the evaluated data. A suite reuses a saved evaluation only when ``current_settings`` equals that
record. ``eval_data`` evaluates the run's encoder on other, labelled data (decoded at the run's
image size): the way to evaluate a run trained on an unlabelled flat folder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError, require
from ..eval.features import extract
from ..eval.knn import knn_accuracy
from ..eval.linear import linear_probe
from ..io import NoSpaceError, atomic_write, atomic_write_text, tensor_bytes
from ..precision import pick_device, pick_precision
from ..runs.checkpoint import CKPT_NAME, CONFIG_NAME, load_checkpoint, read_config, resolve_run
from ..runs.weights import build_untrained
from .settings import PROTOCOLS, VOLATILE, comparable, differences, plain

FEATURES_VERSION = 2  # bump when extraction changes what the cached features hold
_NOT_SETTINGS = {"run", "device", "baseline"}  # arguments that do not change the (trained encoder's) result
TEST_SELECTION_NOTE = "best_* selects the epoch on the test set (as the overlay paper does); last_* does not"


def _log(message: str) -> None:
    print(f"unveil eval: {message}", file=sys.stderr, flush=True)


def _save(run_dir: Path, kind: str, result: dict[str, Any]) -> Path:
    path = run_dir / f"eval_{kind}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


def _state(run: str | Path) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    """(run_dir, ckpt, checkpoint state, config) of a run directory or checkpoint."""
    run_dir, ckpt = resolve_run(run)
    state = load_checkpoint(ckpt)
    cfg = state.get("config") or read_config(run_dir)
    return run_dir, ckpt, state, cfg


def data_identity(name: str) -> str:
    """A registered dataset's canonical name, else the folder's absolute path (data.root left out)."""
    from ..data.registry import canonical_name

    return canonical_name(str(name)) or str(Path(str(name)).expanduser().resolve())


def data_record(cfg: dict[str, Any], state: dict[str, Any], eval_data: str | None) -> dict[str, Any]:
    """What data an evaluation reads: the run's own (as configured) or ``eval_data`` at the run's size."""
    d = cfg["data"]
    size = (state.get("data_info") or {}).get("image_size") or d["image_size"]
    record = {"name": data_identity(eval_data if eval_data is not None else d["name"]), "image_size": size,
              "subset": None if eval_data is not None else d["subset"],
              "test_subset": None if eval_data is not None else d["test_subset"],
              "test_fraction": d["test_fraction"], "split_seed": d["split_seed"]}
    return {**record, "eval_data": eval_data is not None}


def _record(kind: str, args: dict[str, Any], state: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    eval_data = args.get("eval_data")
    if "overrides" in args:
        args = {**args, "overrides": list(args["overrides"] or [])}
    return plain({"protocol": kind, **{k: v for k, v in args.items() if k != "eval_data"},
                  "step": int(state["step"]), "data": data_record(cfg, state, eval_data)})


_SUMMARIES: dict[tuple[str, int, int], tuple[dict[str, Any], dict[str, Any]]] = {}


def _summary(run: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(step and data_info, config) of a run's checkpoint, read once per checkpoint file version:
    a suite asks for every entry's settings each time it writes its table."""
    run_dir, ckpt = resolve_run(run)
    st = ckpt.stat()
    key = (str(ckpt.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _SUMMARIES:
        _, _, state, cfg = _state(run)
        _SUMMARIES[key] = ({"step": state["step"], "data_info": state.get("data_info")}, cfg)
    return _SUMMARIES[key]


def current_settings(kind: str, run: str | Path, **settings: Any) -> dict[str, Any]:
    """The ``settings`` record ``protocol_function(kind)(run, **settings)`` would save now."""
    bound = inspect.signature(protocol_function(kind)).bind(run, **settings)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k not in _NOT_SETTINGS}
    state, cfg = _summary(run)
    if kind == "finetune":
        args = finetune_settings(args, cfg)
    elif kind == "linear":
        args = linear_record(args)
    elif kind == "knn" and args.get("features") == "backbone":
        args.pop("features", None)  # records made before kNN on the head existed stay valid
    return _record(kind, args, state, cfg)


def check_settings(kind: str, settings: dict[str, Any]) -> None:
    """Bad values of a suite's evaluation settings fail before any training (binding checks the names)."""
    from ..eval.linear import LR_RULES, OPTIMIZERS, SCHEDULES

    for key in ("standardize", "augment"):
        if key in settings:
            require(isinstance(settings[key], bool), f"{kind}.{key} must be true or false, got {settings[key]!r}")
    if kind == "knn":
        require(settings.get("features", "backbone") in KNN_FEATURES,
                f"knn.features must be one of {', '.join(KNN_FEATURES)}, got {settings.get('features')!r}")
    if kind == "linear":
        require(settings.get("schedule", "cosine") in SCHEDULES,
                f"linear.schedule must be one of {', '.join(SCHEDULES)}, got {settings.get('schedule')!r}")
        require(settings.get("optimizer", "adam") in OPTIMIZERS,
                f"linear.optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings.get('optimizer')!r}")
        require(isinstance(settings.get("head_bn", False), bool),
                f"linear.head_bn must be true or false, got {settings.get('head_bn')!r}")
        lr = settings.get("lr", 1e-3)
        require(lr in LR_RULES or (not isinstance(lr, (bool, str)) and isinstance(lr, (int, float)) and lr > 0),
                f"linear.lr must be a number > 0 or one of {', '.join(LR_RULES)}, got {lr!r}")
        require(lr not in LR_RULES or settings.get("optimizer") == "lars",
                f"linear.lr={lr} is a LARS rule (MAE's probe): set linear.optimizer=lars, or give lr a number")
        warm, std = settings.get("warmup_epochs", 0.0), settings.get("init_std")
        require(not isinstance(warm, bool) and isinstance(warm, (int, float)) and 0 <= warm <= settings.get("epochs", 100),
                f"linear.warmup_epochs must be a number in [0, epochs], got {warm!r}")
        require(std is None or (not isinstance(std, bool) and isinstance(std, (int, float)) and std > 0),
                f"linear.init_std must be a number > 0 (or null: PyTorch's default), got {std!r}")
    if kind == "finetune":
        choices = ("sgd", "lars", "adamw", "adam")
        require(settings.get("optimizer") in (None, *choices),
                f"finetune.optimizer must be one of {', '.join(choices)}, got {settings.get('optimizer')!r}")
        require(settings.get("protocol", "auto") in FINETUNE_PROTOCOLS,
                f"finetune.protocol must be one of {', '.join(FINETUNE_PROTOCOLS)}, got {settings.get('protocol')!r}")
        for key in ("lr", "weight_decay", "layer_decay", "drop_path", "mixup", "cutmix", "label_smoothing",
                    "warmup_epochs", "random_erasing", "min_lr"):
            value = settings.get(key)
            require(value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0),
                    f"finetune.{key} must be a number >= 0 (or null: the protocol's value), got {value!r}")
        for key in ("layer_decay", "drop_path", "label_smoothing", "random_erasing"):
            value = settings.get(key)
            require(value is None or value <= 1, f"finetune.{key} must be at most 1, got {value!r}")
        require(settings.get("layer_decay") != 0, "finetune.layer_decay must be > 0 (null: the protocol's value)")
        require(settings.get("global_pool") in (None, True, False),
                f"finetune.global_pool must be true, false or null (the protocol's), got {settings.get('global_pool')!r}")
        augment = settings.get("rand_augment")
        require(augment is None or isinstance(augment, str),
                f"finetune.rand_augment must be a timm RandAugment string (e.g. rand-m9-mstd0.5-inc1), none, or null "
                f"(the protocol's), got {augment!r}")
        if augment not in (None, "none"):
            from ..methods._finetune_aug import parse_rand_augment

            parse_rand_augment(augment)


def _unlabelled(run_dir: Path, what: str) -> str:
    return (f"{run_dir} was trained on unlabelled images (a flat folder, no classes): {what} needs labels; "
            "give labelled data with --eval-data DATA (a folder of class folders, a registered dataset name "
            "or a Parquet folder; eval_data=... in Python)")


def _labelled(run_dir: Path, state: dict[str, Any], cfg: dict[str, Any], eval_data: str | None, what: str):
    """The dataset to evaluate on: the run's own, or ``eval_data`` decoded at the run's image size."""
    from ..build import load_dataset_for
    from ..data import load_data

    if eval_data is None:
        require((state.get("data_info") or {}).get("num_classes", 1) > 0, _unlabelled(run_dir, what))
        dataset = load_dataset_for(cfg)
        require(dataset.num_classes > 0, _unlabelled(run_dir, what))
        return dataset
    d = cfg["data"]
    size = (state.get("data_info") or {}).get("image_size") or d["image_size"]
    dataset = load_data(str(eval_data), root=d["root"], image_size=size, test_fraction=d["test_fraction"],
                        split_seed=d["split_seed"])
    require(dataset.num_classes > 0, f"--eval-data {eval_data} has no labels (a flat folder): {what} needs a "
            "folder of class folders, a registered dataset name or a labelled Parquet folder")
    return dataset


def _read_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception:
        return None  # damaged cache: extract again


def cached_features(run: str | Path, device: str = "auto", *, eval_data: str | None = None,
                    what: str = "this evaluation") -> tuple[dict[str, torch.Tensor], dict, Any]:
    """Train/test features of the run's final checkpoint, extracted once and cached beside it.

    The cache file is keyed by everything that changes the features: the checkpoint step, the
    evaluated data (identity, image size, subsets, split), and the precision of the extraction."""
    run_dir, _, state, cfg = _state(run)
    return _features(run_dir, state, cfg, device, eval_data, what)


def _features(run_dir: Path, state: dict[str, Any], cfg: dict[str, Any], device: str, eval_data: str | None,
              what: str, untrained: bool = False, recalibrate_bn: bool = False,
              features: str = "backbone") -> tuple[dict[str, torch.Tensor], dict, Any]:
    """Features of the trained encoder, or with ``untrained`` of the encoder the run started from
    (rebuilt under the run's seed exactly as the engine builds it: a ``train.epochs=0`` run's weights).
    ``features="head"``: the method's head embedding (``head_embedder``), cached under its own name."""
    from ..build import build_method_for

    dataset = _labelled(run_dir, state, cfg, eval_data, what)
    dev = pick_device(device)
    precision = pick_precision(cfg["train"]["precision"], dev)
    step = 0 if untrained else int(state["step"])
    key = json.dumps({"version": FEATURES_VERSION, "step": step, "data": data_record(cfg, state, eval_data),
                      "precision": precision, **({"untrained": True} if untrained else {}),
                      **({"bn_recalibrated": BN_RECALIBRATION_IMAGES} if recalibrate_bn else {}),
                      **({"features": features} if features != "backbone" else {})}, sort_keys=True)
    prefix = ("features_untrained_bn" if recalibrate_bn else "features_untrained") if untrained else f"features_step{step}"
    prefix += "" if features == "backbone" else f"_{features}"
    cache = run_dir / f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    if cache.is_file():
        hit = _read_cache(cache, key)
        if hit is not None:
            return hit, cfg, dataset
    if untrained:
        method = build_untrained(cfg, state.get("data_info"))  # the weights the engine started from
    else:
        method = build_method_for(cfg, dataset_info=state.get("data_info"))
        method.load_state_dict(state["model"])
    method.to(dev).eval()
    embed = method.embed if features == "backbone" else head_embedder(method, cfg["method"]["name"])
    if recalibrate_bn:
        recalibrate_batchnorm(method, dataset.train.images, dev, precision)
    feats = {
        "train_x": extract(embed, dataset.train.images, dev, precision),
        "train_y": dataset.train.labels.clone(),
        "test_x": extract(embed, dataset.test.images, dev, precision),
        "test_y": dataset.test.labels.clone(),
    }
    try:
        atomic_write(cache, lambda tmp: save_file(feats, tmp, metadata={"key": key}), needed=tensor_bytes(feats))
    except NoSpaceError as exc:  # only a cache: the evaluation goes on, the user hears why the next one recomputes
        print(f"unveil: features not cached ({exc})", file=sys.stderr)
    return feats, cfg, dataset


BN_RECALIBRATION_IMAGES = 4096


@torch.no_grad()
def recalibrate_batchnorm(method: torch.nn.Module, images: torch.Tensor, device: torch.device, precision: str,
                          max_images: int = BN_RECALIBRATION_IMAGES, batch_size: int = 256) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) from
    ``embed`` passes over the first ``max_images`` training images; weights untouched. An untrained
    encoder keeps BN's initial statistics (mean 0, variance 1) while a trained one has real ones, so
    this gives the untrained baseline the calibration any forward pass would give it. Returns the
    number of BatchNorm layers recalibrated."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from ..precision import autocast

    norms = [m for m in method.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
        m.train()
    try:
        for chunk in images[:max_images].split(batch_size):
            with autocast(device, precision):
                method.embed(chunk.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
    return len(norms)


KNN_FEATURES = ("backbone", "head")
# methods whose head is their projector on top of ``embed``'s backbone features (no ``embed_head`` of their own)
def head_embedder(method: torch.nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The method's head embedding, for kNN with ``features: head`` (paper 5's monitor: the 128-d
    output of MoCo's query head, docs/design.md 5.1): the method's ``embed_head`` (MoCo and MixDet: the
    query head; SimCLR: its 128-d projection; BYOL: its 256-d projection, not the predictor); methods
    without one fail in one line."""
    if method.implements("embed_head"):
        return method.embed_head
    raise UserError(f"kNN with features=head: method {name} has no projection head to embed with (moco, mixdet, "
                    "simclr and byol have one): use features=backbone")


def evaluate_knn(run: str | Path, k: int = 200, temperature: float = 0.1, device: str = "auto", *,
                 features: str = "backbone", eval_data: str | None = None, baseline: bool = False) -> dict[str, Any]:
    """Weighted kNN (cosine, ``exp(sim / T)`` votes) of the test features against the train features.

    ``features``: ``backbone`` (the pooled backbone features, unveil's evaluation for every method;
    saved as ``eval_knn.json``) or ``head`` (the head embedding, ``head_embedder``; saved as
    ``eval_knn_head.json``, so the two stand side by side). ``baseline``: also score the untrained
    encoder the run started from, same data, features and protocol (``result["untrained"]``), so the
    number never stands alone."""
    require(features in KNN_FEATURES, f"knn features must be one of {', '.join(KNN_FEATURES)}, got {features!r}")
    run_dir, _, state, cfg = _state(run)
    args = {"k": k, "temperature": temperature, **({"features": features} if features != "backbone" else {}),
            "eval_data": eval_data}
    settings = _record("knn", args, state, cfg)
    feats, cfg, dataset = _features(run_dir, state, cfg, device, eval_data, "kNN", features=features)
    acc = knn_accuracy(feats["train_x"], feats["train_y"], feats["test_x"], feats["test_y"], dataset.num_classes,
                       k=k, temperature=temperature)
    result = {"protocol": "knn", "k": k, "temperature": temperature, "features": features, "dataset": dataset.name,
              "feature_dim": int(feats["train_x"].shape[1]), "train_images": len(feats["train_y"]),
              "test_images": len(feats["test_y"]), **acc, "settings": settings}
    if baseline:
        base, _, _ = _features(run_dir, state, cfg, device, eval_data, "kNN", untrained=True, features=features)
        result["untrained"] = knn_accuracy(base["train_x"], base["train_y"], base["test_x"], base["test_y"],
                                           dataset.num_classes, k=k, temperature=temperature)
        # the stronger control: the same untrained weights with BatchNorm statistics estimated on the data
        bn, _, _ = _features(run_dir, state, cfg, device, eval_data, "kNN", untrained=True, recalibrate_bn=True,
                             features=features)
        result["untrained_bn_recalibrated"] = {
            **knn_accuracy(bn["train_x"], bn["train_y"], bn["test_x"], bn["test_y"], dataset.num_classes, k=k,
                           temperature=temperature),
            "note": f"untrained weights, BatchNorm running statistics re-estimated on {BN_RECALIBRATION_IMAGES} "
                    "training images (eval view); without BatchNorm layers this equals 'untrained'"}
    result["saved"] = str(_save(run_dir, "knn" if features == "backbone" else f"knn_{features}", result))
    return result


def linear_protocol_name(epochs: int, lr: float | str, batch_size: int, optimizer: str, weight_decay: float,
                         standardize: bool, schedule: str, head_bn: bool = False, warmup_epochs: float = 0.0,
                         init_std: float | None = None) -> str:
    """'RR' when the settings are the RR linear evaluation (Patacchiola & Storkey), else a plain description."""
    if (epochs, lr, batch_size, optimizer, weight_decay, standardize, schedule, head_bn, warmup_epochs, init_std) == (
            100, 1e-3, 128, "adam", 0.0, False, "constant", False, 0.0, None):
        return "RR linear evaluation (raw features, Adam 1e-3 constant, batch 128, 100 epochs)"
    return (f"linear probe on {'standardised' if standardize else 'raw'} features"
            f"{', BatchNorm (no affine) before the head' if head_bn else ''}"
            f"{f', head init std {init_std:g}' if init_std is not None else ''}, {optimizer} "
            f"{lr if isinstance(lr, str) else f'{lr:g}'}{f' ({warmup_epochs:g} warm-up epochs)' if warmup_epochs else ''} "
            f"{schedule}, batch {batch_size}, {epochs} epochs")


def linear_record(args: dict[str, Any]) -> dict[str, Any]:
    """The linear settings as recorded: ``head_bn``, ``warmup_epochs`` and ``init_std`` only when on, so
    records made before they existed stay valid."""
    args = dict(args)
    for key, off in (("head_bn", False), ("warmup_epochs", 0.0), ("init_std", None)):
        if key in args and (args[key] is None if off is None else not args[key]):
            args.pop(key)
    return args


def evaluate_linear(run: str | Path, epochs: int = 100, lr: float | str = 1e-3, batch_size: int = 256,
                    optimizer: str = "adam", weight_decay: float = 0.0, device: str = "auto", *,
                    standardize: bool = True, schedule: str = "cosine",
                    eval_data: str | None = None, baseline: bool = False, head_bn: bool = False,
                    warmup_epochs: float = 0.0, init_std: float | None = None) -> dict[str, Any]:
    """A linear layer on frozen features. ``standardize=False, schedule="constant"`` with Adam 1e-3,
    batch 128 and 100 epochs is the RR protocol; the defaults standardise and decay the lr (cosine).
    MAE's linear probe (main_linprobe.py): ``head_bn=True, optimizer="lars", lr="mae-budget",
    warmup_epochs=10, init_std=0.01, weight_decay=0, epochs=90, standardize=False`` (the BatchNorm
    standardises); ``"mae-budget"`` gives LARS MAE's summed lr over however many steps the probe has
    (``unveil.eval.linear.mae_budget_lr``): MAE's own rule, 0.1 x batch/256, barely moves the head at
    our dataset sizes."""
    run_dir, _, state, cfg = _state(run)
    args = linear_record({"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                          "weight_decay": weight_decay, "standardize": standardize, "schedule": schedule,
                          "eval_data": eval_data, "head_bn": head_bn, "warmup_epochs": warmup_epochs,
                          "init_std": init_std})
    settings = _record("linear", args, state, cfg)
    feats, cfg, dataset = _features(run_dir, state, cfg, device, eval_data, "the linear probe")
    probe = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
             "weight_decay": weight_decay, "standardize": standardize, "schedule": schedule, "head_bn": head_bn,
             "warmup_epochs": warmup_epochs, "init_std": init_std}
    res = linear_probe(feats["train_x"], feats["train_y"], feats["test_x"], feats["test_y"], dataset.num_classes,
                       **probe)
    name = linear_protocol_name(epochs, lr, batch_size, optimizer, weight_decay, standardize, schedule, head_bn,
                                warmup_epochs, init_std)
    result = {"protocol": "linear", "protocol_name": name, "dataset": dataset.name, "optimizer": optimizer, "lr": lr,
              "batch_size": batch_size, "weight_decay": weight_decay, "standardize": standardize,
              "schedule": schedule, "head_bn": head_bn, "warmup_epochs": warmup_epochs, "init_std": init_std,
              "feature_dim": int(feats["train_x"].shape[1]), **res, "note": TEST_SELECTION_NOTE, "settings": settings}
    if baseline:  # the same probe on the untrained encoder's features
        base, _, _ = _features(run_dir, state, cfg, device, eval_data, "the linear probe", untrained=True)
        res0 = linear_probe(base["train_x"], base["train_y"], base["test_x"], base["test_y"], dataset.num_classes,
                            **probe)
        result["untrained"] = {k: v for k, v in res0.items() if k != "history"}
    result["saved"] = str(_save(run_dir, "linear", result))
    return result


def _finetune_history(out: Path) -> list[dict[str, Any]]:
    from ..runs.logs import EPOCH_LOG, read_csv

    # epoch 0 (a before-training baseline row, if the monitor writes one) is not a fine-tuned model
    return [r for r in read_csv(out / EPOCH_LOG) if r.get("test_top1") is not None and int(r["epoch"]) >= 1]


FINETUNE_PROTOCOLS = ("auto", "convnet", "vit")
# Every fine-tune setting a preset decides; an explicit argument overrides the preset's value.
FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    # what `evaluate_finetune` always did (SGD 0.01, wd 1e-4, nothing else): the ResNet suites' protocol
    "convnet": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 1e-4, "layer_decay": None, "drop_path": 0.0,
                "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0, "warmup_epochs": 0.0, "rand_augment": None,
                "random_erasing": 0.0, "global_pool": False, "min_lr": 0.0},
    # MAE's fine-tune (facebookresearch/mae main_finetune.py, FINETUNE.md; docs/design.md 4.3): AdamW (0.9,
    # 0.999), lr 5e-4 per 256 images of the GLOBAL batch (the engine's scale_lr), wd 0.05, drop path
    # 0.1, mixup 0.8, CutMix 1.0, smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25
    # (pixel mode), global average pooling with fc_norm, min lr 1e-6, 5 warm-up epochs (10 % of the
    # epochs below 50). Layer decay: MAE's 0.65 for its 12-block ViT-B and 0.75 for ViT-L/H (24/32
    # blocks); it compounds per block (block i gets r ** (depth - i)), so it goes with the depth:
    # ViT-Tiny/Small have ViT-B's 12 blocks and get 0.65 (``vit_layer_decay``), deeper ones 0.75.
    "vit": {"optimizer": "adamw", "lr": None, "weight_decay": 0.05, "layer_decay": None, "drop_path": 0.1,
            "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1, "warmup_epochs": None,
            "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "global_pool": True, "min_lr": 1e-6},
}
VIT_BASE_LR = 5e-4  # per 256 images of the global batch (MAE's rule: lr = base x global batch / 256)
VIT_BETAS = [0.9, 0.999]
_OFF = {"layer_decay": None, "drop_path": 0.0, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0,
        "warmup_epochs": 0.0, "rand_augment": None, "random_erasing": 0.0, "global_pool": False, "min_lr": 0.0}


def vit_layer_decay(cfg: dict[str, Any]) -> float:
    """MAE's layer decay for the run's ViT depth: 0.65 up to 12 blocks (ViT-B), 0.75 deeper (ViT-L/H)."""
    depth = (cfg.get("backbone") or {}).get("depth", 12)
    return 0.65 if not isinstance(depth, int) or depth <= 12 else 0.75


def is_vit_config(cfg: dict[str, Any]) -> bool:
    """A run whose backbone is one of the registered ViTs (``vit_*``)."""
    return str((cfg.get("backbone") or {}).get("name") or "").startswith("vit_")


def finetune_settings(args: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """The fine-tune arguments with the protocol resolved (``protocol`` auto -> vit for a ViT run, else
    convnet) and every None filled from its preset: what is recorded and what is trained.

    ``evaluate_finetune`` and ``current_settings`` both call this, so a suite compares like with
    like. The convnet preset with none of the ViT options records exactly the keys recorded before
    they existed (records and fine-tunes made then stay valid); otherwise ``preset`` and every
    resolved option are recorded (``betas`` too for the vit preset)."""
    args = dict(args)
    chosen = args.pop("protocol", "auto") or "auto"
    require(chosen in FINETUNE_PROTOCOLS,
            f"finetune protocol must be one of {', '.join(FINETUNE_PROTOCOLS)}, got {chosen!r}")
    preset = ("vit" if is_vit_config(cfg) else "convnet") if chosen == "auto" else chosen
    values = dict(FINETUNE_PRESETS[preset])
    epochs = int(args.get("epochs", 20))  # the lr needs no batch: per 256 of the global batch (scale_lr)
    scale_lr = preset == "vit" and args.get("lr") is None
    if preset == "vit":
        values["lr"] = VIT_BASE_LR
        values["warmup_epochs"] = 5.0 if epochs >= 50 else 0.1 * epochs
        values["layer_decay"] = vit_layer_decay(cfg)
    for key in list(values):
        if args.get(key) is not None:
            values[key] = args[key]
    for key in ("lr", "weight_decay", "drop_path", "mixup", "cutmix", "label_smoothing", "warmup_epochs",
                "random_erasing", "min_lr"):
        values[key] = float(values[key])
    if values["layer_decay"] is not None:
        values["layer_decay"] = float(values["layer_decay"])
    values["global_pool"] = bool(values["global_pool"])
    if values["rand_augment"] == "none":
        values["rand_augment"] = None
    if args.get("augment") is False:  # the test view only: no RandAugment or erasing on top of it
        require(not args.get("random_erasing") and args.get("rand_augment") in (None, "none"),
                "finetune rand_augment / random_erasing augment the training view: they need augment=true")
        values["rand_augment"], values["random_erasing"] = None, 0.0
    out = {k: v for k, v in args.items() if k not in values}
    out.update({k: values[k] for k in ("lr", "optimizer", "weight_decay")})
    if scale_lr:  # recorded only when on: convnet records made before it existed stay valid
        out["scale_lr"] = True
    if preset == "vit" or any(values[k] != off for k, off in _OFF.items()):
        out.update({"preset": preset, **{k: values[k] for k in _OFF}})
        if preset == "vit":
            out["betas"] = list(VIT_BETAS)
    return out


def _finetune_config(base: dict[str, Any], state: dict[str, Any], method: Any, out: Path, init: Path,
                     s: dict[str, Any], overrides: list[str] | None, eval_data: str | None) -> dict[str, Any]:
    """The supervised run that is the fine-tune of ``init``'s weights with the resolved settings ``s``."""
    from ..config import merge, parse_overrides, validate

    spec = method.backbone_spec or base["backbone"]
    cfg = merge(base, {"out": str(out)})
    if eval_data is not None:
        size = (state.get("data_info") or {}).get("image_size") or base["data"]["image_size"]
        cfg["data"].update({"name": str(eval_data), "image_size": size, "subset": None, "test_subset": None})
    cfg["method"] = {"name": "supervised", "normalize": method.normalized_inputs,
                     "augment": bool(s["augment"])}
    if method.eval_filter is not None:  # e.g. MSCN's high-pass: fine-tune on what pretraining saw
        cfg["method"]["input_filter"] = method.eval_filter
    for key in ("layer_decay", "mixup", "cutmix", "label_smoothing", "rand_augment",
                "random_erasing"):  # only when on: old configs stay equal
        if s.get(key):
            cfg["method"][key] = s[key]
    cfg["backbone"] = dict(spec)
    if "drop_path" in s:  # one line before any training when a ViT option meets another backbone
        vit = callable(getattr(method.backbone, "forward_tokens", None)) or is_vit_config(
            {"backbone": spec})
        for key in ("drop_path", "layer_decay", "global_pool"):
            require(vit or not s.get(key), f"{key.replace('_', ' ')} ({s.get(key)}) needs a ViT backbone; this run's "
                    f"is {spec.get('name')!r}: leave {key} unset (or 0 / null / false)")
        if vit:
            cfg["backbone"]["drop_path_rate"] = s["drop_path"]
            if s.get("global_pool"):  # MAE's fine-tune: mean of the patch tokens + a fresh fc_norm
                cfg["backbone"]["global_pool"] = "avg"
    # scale_lr: the lr is per 256 images of the global batch (all processes), as MAE's; min_lr only when set
    cfg["train"].update({"epochs": s["epochs"], "lr": s["lr"], "batch_size": s["batch_size"],
                         "optimizer": s["optimizer"], "weight_decay": s["weight_decay"], "monitor": "classify",
                         "monitor_every_epochs": 1, "init_backbone": str(init),
                         "warmup_epochs": s.get("warmup_epochs", 0.0), "max_steps": None,
                         "scale_lr": bool(s.get("scale_lr", False)), "min_lr": s.get("min_lr", 0.0),
                         "freeze_backbone": False, "monitor_test_size": None})  # score on the whole test split
    if "betas" in s:
        cfg["train"]["betas"] = list(s["betas"])
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides))
    validate(cfg)
    return cfg


def _run_finetune(out: Path, cfg: dict[str, Any], settings: dict[str, Any], epochs: int,
                  write_init: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Fine-tune into ``out``: continue an interrupted one with the same settings, read back a finished
    one, start over one made with other settings (said on stderr). Returns best/last accuracies."""
    from ..runs.logs import SUMMARY
    from ..train import engine

    marker = out / "eval_settings.json"
    if (out / CKPT_NAME).is_file():
        saved_cfg = read_config(out) if (out / CONFIG_NAME).is_file() else {}
        saved = json.loads(marker.read_text()) if marker.is_file() else None
        volatile = VOLATILE | {("train", "init_backbone")}  # the weights' identity is settings["step"]
        diff = differences(comparable(cfg, volatile), comparable(saved_cfg, volatile))
        if saved is None:
            diff.append("no settings recorded")
        elif saved != settings:
            diff += differences(settings, saved)
        if diff:
            _log(f"{out} was fine-tuned with other settings ({'; '.join(diff[:3])}): starting it over")
            shutil.rmtree(out)
        elif (out / SUMMARY).is_file():
            _log(f"{out}: the fine-tune with these settings already finished, read back")
        else:
            step = int(load_checkpoint(out / CKPT_NAME)["step"])
            _log(f"{out}: continuing the interrupted fine-tune from step {step}")
            if write_init is not None:
                write_init(Path(cfg["train"]["init_backbone"]))
            engine.train(cfg, resume=out)
    if not (out / CKPT_NAME).is_file():
        if out.exists():
            shutil.rmtree(out)  # logs of an attempt that never reached a checkpoint
        out.mkdir(parents=True)
        atomic_write_text(marker, json.dumps(settings, indent=2))
        if write_init is not None:
            write_init(Path(cfg["train"]["init_backbone"]))
        engine.train(cfg)
    history = _finetune_history(out)
    require(bool(history), f"{out} logged no test accuracy: the fine-tune did not finish an epoch")
    best = max(history, key=lambda r: r["test_top1"])
    missing = sorted(set(range(1, epochs + 1)) - {int(r["epoch"]) for r in history})
    note = TEST_SELECTION_NOTE
    if missing:  # interrupted between an epoch's checkpoint and its test pass: that accuracy is gone
        note += f"; no test accuracy for epoch(s) {missing} (interrupted before it was logged): best_* is over the rest"
        _log(f"{out}: no test accuracy logged for epoch(s) {missing} (an interruption); best is over the others")
    return {"last_top1": history[-1]["test_top1"], "last_top5": history[-1]["test_top5"],
            "best_top1": best["test_top1"], "best_top5": best["test_top5"], "best_epoch": int(best["epoch"]),
            "history": history, "missing_epochs": missing, "note": note}


def evaluate_finetune(run: str | Path, epochs: int = 20, lr: float | None = None, batch_size: int = 256,
                      optimizer: str | None = None, weight_decay: float | None = None,
                      overrides: list[str] | None = None, *, augment: bool = True, eval_data: str | None = None,
                      protocol: str = "auto", layer_decay: float | None = None, drop_path: float | None = None,
                      mixup: float | None = None, cutmix: float | None = None, label_smoothing: float | None = None,
                      warmup_epochs: float | None = None, baseline: bool = False, rand_augment: str | None = None,
                      random_erasing: float | None = None, global_pool: bool | None = None,
                      min_lr: float | None = None) -> dict[str, Any]:
    """Fine-tune the whole backbone + a linear head with labels (the supervised method), from the run's weights.

    ``protocol`` picks the preset for every argument left None (``FINETUNE_PRESETS``): "auto" is
    "vit" for a ViT run (MAE's: AdamW, lr 5e-4 per 256 images of the global batch, wd 0.05, layer
    decay 0.65 for 12 blocks (0.75 deeper), drop path 0.1, mixup 0.8, CutMix 1.0, label smoothing 0.1,
    RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, global average pooling with fc_norm, min
    lr 1e-6, warm-up 5 epochs or 10 % of them below 50), else "convnet" (SGD 0.01, wd 1e-4, nothing
    else: the values this function always had). A given ``lr`` is absolute (not scaled). ``augment=False``
    trains on the deterministic test view (the overlay paper: "no additional augmentation"); the
    default trains on random-resized crops + flips. The fine-tune lives in ``RUN/finetune``: an
    interrupted one with the same settings is continued from its checkpoint, a finished one is read
    back, one made with other settings is started over (said on stderr). ``baseline`` also
    fine-tunes the untrained encoder the run started from (its ``train.epochs=0`` weights), same
    settings, in ``RUN/finetune_untrained``: ``result["untrained"]``."""
    run_dir, ckpt, state, base = _state(run)
    args = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
            "weight_decay": weight_decay, "overrides": overrides, "augment": augment, "eval_data": eval_data,
            "protocol": protocol, "layer_decay": layer_decay, "drop_path": drop_path, "mixup": mixup,
            "cutmix": cutmix, "label_smoothing": label_smoothing, "warmup_epochs": warmup_epochs,
            "rand_augment": rand_augment, "random_erasing": random_erasing, "global_pool": global_pool,
            "min_lr": min_lr}
    resolved = finetune_settings(args, base)
    settings = _record("finetune", resolved, state, base)
    preset = resolved.get("preset", "convnet")
    if eval_data is None:
        require((state.get("data_info") or {}).get("num_classes", 1) > 0, _unlabelled(run_dir, "fine-tuning"))
    from ..build import build_method_for

    method = build_method_for(base, dataset_info=state.get("data_info"))
    cfg = _finetune_config(base, state, method, run_dir / "finetune", ckpt, resolved, overrides, eval_data)
    if eval_data is not None:  # one clear line before training if the data has no labels
        _labelled(run_dir, state, base, eval_data, "fine-tuning")
    shown = {k: resolved[k] for k in ("optimizer", "lr", "scale_lr", "weight_decay", *_OFF) if k in resolved}
    _log(f"fine-tune protocol: {preset}{' (auto)' if protocol == 'auto' else ''}: "
         + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    res = _run_finetune(run_dir / "finetune", cfg, settings, epochs)
    result = {"protocol": "finetune", "preset": preset, "dataset": cfg["data"]["name"], "epochs": epochs,
              "batch_size": batch_size, "augment": augment,
              **{k: v for k, v in resolved.items() if k not in ("overrides", "eval_data", "epochs", "batch_size",
                                                                 "augment", "preset")},
              **res, "settings": settings}
    if baseline:
        result["untrained"] = _finetune_untrained(run_dir, base, state, method, resolved, overrides, eval_data,
                                                  settings, epochs)
    result["saved"] = str(_save(run_dir, "finetune", result))
    return result


def _finetune_untrained(run_dir: Path, base: dict[str, Any], state: dict[str, Any], method: torch.nn.Module,
                        resolved: dict[str, Any], overrides: list[str] | None, eval_data: str | None,
                        settings: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The same fine-tune from the encoder the run started from, in ``RUN/finetune_untrained``."""

    out = run_dir / "finetune_untrained"
    init = out / "untrained_backbone.safetensors"
    cfg0 = _finetune_config(base, state, method, out, init, resolved, overrides, eval_data)

    def write_untrained(path: Path) -> None:
        """The encoder the run started from: rebuilt under its seed, as ``_features(untrained=True)``."""
        from ..export import export_backbone

        export_backbone(build_untrained(base, state.get("data_info")).backbone, path, base)

    res0 = _run_finetune(out, cfg0, {**settings, "step": 0, "untrained": True}, epochs, write_untrained)
    return {k: v for k, v in res0.items() if k not in ("history", "note")}


def evaluate_monitor(run: str | Path, metric: str = "test") -> dict[str, Any]:
    """Best and last epoch of the run's own per-epoch monitor (``test_top1``: a classify monitor).

    This is how the supervised-from-scratch row is evaluated: its training *is* the fine-tune
    protocol from random weights, so its own per-epoch test accuracy is the comparable number."""
    from ..runs.logs import EPOCH_LOG, read_csv

    run_dir, _, state, cfg = _state(run)
    rows = [r for r in read_csv(run_dir / EPOCH_LOG) if r.get(f"{metric}_top1") is not None]
    require(bool(rows), f"{run_dir} logged no {metric}_top1 per epoch: train it with train.monitor=classify")
    best = max(rows, key=lambda r: r[f"{metric}_top1"])
    result = {"protocol": "monitor", "metric": f"{metric}_top1", "last_top1": rows[-1][f"{metric}_top1"],
              "last_top5": rows[-1].get(f"{metric}_top5"), "best_top1": best[f"{metric}_top1"],
              "best_top5": best.get(f"{metric}_top5"), "best_epoch": int(best["epoch"]), "history": rows,
              "note": "the run's own per-epoch test accuracy; best_* selects the epoch on the test set",
              "settings": _record("monitor", {"metric": metric}, state, cfg)}
    atomic_write_text(run_dir / "eval_monitor.json", json.dumps(result, indent=2))
    return result


def protocol_function(kind: str) -> Callable[..., dict[str, Any]]:
    """The function behind a suite's ``evaluate: [{kind: settings}]`` item."""
    functions = {"finetune": evaluate_finetune, "linear": evaluate_linear, "knn": evaluate_knn,
                 "monitor": evaluate_monitor}
    if kind not in functions:
        raise UserError(f"unknown evaluation protocol '{kind}'; known: {', '.join(PROTOCOLS)}")
    return functions[kind]
