"""A linear probe on frozen, cached features (``unveil eval linear``): the RR protocol, MAE's probe, or the
default (standardised features, Adam, cosine)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..data.labels import LABELS_HELP, labels_suffix, parse_labels, pick_labelled
from ..errors import require
from ..eval.linear import LR_RULES, OPTIMIZERS, SCHEDULES, linear_probe
from ._shared import TEST_SELECTION_NOTE, features_of, read_run, save_result, settings_record
from .base import PROTOCOLS, Column, Protocol, is_number, require_positive

MAE_PROBE = ("--head-bn --optimizer lars --lr mae-budget --warmup-epochs 10 --init-std 0.01 --weight-decay 0 "
             "--epochs 90 --no-standardize")


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
    """The linear settings as recorded: ``head_bn``, ``warmup_epochs``, ``init_std`` and the low-shot ``labels``
    (with its seed) only when on, so records made before they existed stay valid."""
    args = dict(args)
    if args.get("labels") is None:
        args.pop("labels_seed", None)
    for key, off in (("head_bn", False), ("warmup_epochs", 0.0), ("init_std", None), ("labels", None)):
        if key in args and (args[key] is None if off is None else not args[key]):
            args.pop(key)
    return args


def evaluate_linear(run: str | Path, epochs: int = 100, lr: float | str = 1e-3, batch_size: int = 256,
                    optimizer: str = "adam", weight_decay: float = 0.0, device: str = "auto", *,
                    standardize: bool = True, schedule: str = "cosine",
                    eval_data: str | None = None, baseline: bool = False, head_bn: bool = False,
                    warmup_epochs: float = 0.0, init_std: float | None = None, labels: str | int | None = None,
                    labels_seed: int = 0) -> dict[str, Any]:
    """A linear layer on frozen features. ``standardize=False, schedule="constant"`` with Adam 1e-3,
    batch 128 and 100 epochs is the RR protocol; the defaults standardise and decay the lr (cosine).
    MAE's linear probe (main_linprobe.py): ``head_bn=True, optimizer="lars", lr="mae-budget",
    warmup_epochs=10, init_std=0.01, weight_decay=0, epochs=90, standardize=False`` (the BatchNorm
    standardises); ``"mae-budget"`` gives LARS MAE's summed lr over however many steps the probe has
    (``unveil.eval.linear.mae_budget_lr``): MAE's own rule, 0.1 x batch/256, barely moves the head at
    our dataset sizes. ``labels``: train the head on a low-shot share of the training labels (``1%``, ``10%``, N
    per class; stratified, ``labels_seed``), saved as ``eval_linear_1pct.json`` etc. beside the full probe."""
    run_dir, _, state, cfg = read_run(run)
    args = linear_record({"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                          "weight_decay": weight_decay, "standardize": standardize, "schedule": schedule,
                          "eval_data": eval_data, "head_bn": head_bn, "warmup_epochs": warmup_epochs,
                          "init_std": init_std, "labels": labels, "labels_seed": labels_seed})
    settings = settings_record("linear", args, state, cfg)
    feats, cfg, dataset = features_of(run_dir, state, cfg, device, eval_data, "the linear probe")
    feats = _labelled_share(feats, labels, labels_seed)
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
              "feature_dim": int(feats["train_x"].shape[1]), "labels": labels or "all",
              "train_labels": len(feats["train_y"]), **res, "note": TEST_SELECTION_NOTE, "settings": settings}
    if baseline:  # the same probe on the untrained encoder's features
        base, _, _ = features_of(run_dir, state, cfg, device, eval_data, "the linear probe", untrained=True)
        base = _labelled_share(base, labels, labels_seed)
        res0 = linear_probe(base["train_x"], base["train_y"], base["test_x"], base["test_y"], dataset.num_classes,
                            **probe)
        result["untrained"] = {k: v for k, v in res0.items() if k != "history"}
    result["saved"] = str(save_result(run_dir, _slot({"labels": labels}), result))
    return result


def _labelled_share(feats: dict[str, Any], labels: str | int | None, seed: int) -> dict[str, Any]:
    """The training features of the low-shot share only (the same images for the trained and untrained encoder)."""
    if labels is None:
        return feats
    keep = torch.from_numpy(pick_labelled(feats["train_y"], labels, seed))
    return {**feats, "train_x": feats["train_x"][keep], "train_y": feats["train_y"][keep]}


def _slot(settings: dict[str, Any]) -> str:
    return "linear" + labels_suffix(settings.get("labels"))


def _lr(text: str) -> float | str:
    """A number, or the name of an lr rule (``mae-budget``)."""
    if text in LR_RULES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or one of {', '.join(LR_RULES)}, got {text!r}") from None


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=_lr, default=1e-3,
                   help="absolute lr, or mae-budget (LARS: MAE's probe's lr summed over its steps, spread over "
                   "this probe's steps: 6.4 x 7038 / steps)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                   help="standardise the features with the train statistics (default); the RR protocol does not")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule (RR protocol: constant)")
    p.add_argument("--head-bn", action=argparse.BooleanOptionalAction, default=False,
                   help=f"BatchNorm1d without affine parameters before the linear head (MAE's linear probe: {MAE_PROBE})")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warm-up (MAE's probe: 10)")
    p.add_argument("--labels", default=None, metavar="SHARE", help=LABELS_HELP)
    p.add_argument("--labels-seed", type=int, default=0, help="which stratified draw of --labels")
    p.add_argument("--init-std", type=float, default=None,
                   help="the head's weight from a truncated normal of this std, zero bias (MAE's probe: 0.01; "
                   "default: PyTorch's initialisation)")


def _check(settings: dict[str, Any]) -> None:
    require_positive(settings, "epochs", "batch_size", integer=True)
    for key in ("standardize", "head_bn"):
        require(isinstance(settings.get(key, False), bool), f"linear.{key} must be true or false, got {settings.get(key)!r}")
    require(settings.get("schedule", "cosine") in SCHEDULES,
            f"linear.schedule must be one of {', '.join(SCHEDULES)}, got {settings.get('schedule')!r}")
    require(settings.get("optimizer", "adam") in OPTIMIZERS,
            f"linear.optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings.get('optimizer')!r}")
    lr = settings.get("lr", 1e-3)
    require(lr in LR_RULES or is_number(lr, strict=True),
            f"linear.lr must be a number > 0 or one of {', '.join(LR_RULES)}, got {lr!r}")
    require(lr not in LR_RULES or settings.get("optimizer") == "lars",
            f"linear.lr={lr} is a LARS rule (MAE's probe): set linear.optimizer=lars, or give lr a number")
    require(is_number(settings.get("weight_decay", 0.0)),
            f"linear.weight_decay must be a number >= 0, got {settings.get('weight_decay')!r}")
    warm, std = settings.get("warmup_epochs", 0.0), settings.get("init_std")
    require(is_number(warm) and warm <= settings.get("epochs", 100),
            f"linear.warmup_epochs must be a number in [0, epochs], got {warm!r}")
    require(std is None or is_number(std, strict=True),
            f"linear.init_std must be a number > 0 (or null: PyTorch's default), got {std!r}")
    parse_labels(settings.get("labels"))


PROTOCOLS.add("linear", Protocol(
    name="linear", help="linear probe on frozen, cached features", evaluate=evaluate_linear,
    add_arguments=_arguments, check=_check, record=lambda args, cfg: linear_record(args), slot_of=_slot, order=20,
    description="Linear probe on frozen features. The RR protocol (the context-patch paper's): --optimizer adam "
                "--lr 1e-3 --batch-size 128 --epochs 100 --no-standardize --schedule constant. MAE's linear probe: "
                f"{MAE_PROBE}.",
    paper_label="paper linear",
    columns=(Column("linear best / last", "linear", (("linear_best_top1", "best_top1"),
                                                      ("linear_last_top1", "last_top1")), shown=2),)))
