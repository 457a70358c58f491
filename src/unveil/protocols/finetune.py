"""Fine-tuning the whole encoder with a linear head (``unveil eval finetune``): the supervised method trained
from the run's weights (and, for the baseline, from the weights the run started from), with the convnet
preset or MAE's ViT recipe."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.labels import LABELS_HELP, labels_suffix, parse_labels
from ..errors import require
from ..io import atomic_write_text
from ..runs.checkpoint import CKPT_NAME, CONFIG_NAME, load_checkpoint, read_config
from ..runs.weights import build_untrained
from ._shared import (
    TEST_SELECTION_NOTE,
    labelled_data,
    log,
    read_run,
    save_result,
    settings_record,
    unlabelled_message,
)
from .base import PROTOCOLS, Column, Protocol, is_number, require_positive
from .settings import VOLATILE, comparable, differences


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
    if args.get("labels") is None:  # recorded only when on: records made before low-shot existed stay valid
        for key in ("labels", "labels_seed"):
            args.pop(key, None)
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
    if s.get("labels") is not None:  # the low-shot share of the training split (the test split is whole)
        cfg["data"].update({"labels": s["labels"], "labels_seed": s.get("labels_seed", 0)})
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
            log(f"{out} was fine-tuned with other settings ({'; '.join(diff[:3])}): starting it over")
            shutil.rmtree(out)
        elif (out / SUMMARY).is_file():
            log(f"{out}: the fine-tune with these settings already finished, read back")
        else:
            step = int(load_checkpoint(out / CKPT_NAME)["step"])
            log(f"{out}: continuing the interrupted fine-tune from step {step}")
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
        log(f"{out}: no test accuracy logged for epoch(s) {missing} (an interruption); best is over the others")
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
                      min_lr: float | None = None, labels: str | int | None = None,
                      labels_seed: int = 0) -> dict[str, Any]:
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
    settings, in ``RUN/finetune_untrained``: ``result["untrained"]``. ``labels``: fine-tune on a low-shot share
    of the training labels (``1%``, ``10%``, N per class; stratified, ``labels_seed``), in ``RUN/finetune_1pct``
    etc., saved as ``eval_finetune_1pct.json`` beside the full fine-tune."""
    run_dir, ckpt, state, base = read_run(run)
    args = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
            "weight_decay": weight_decay, "overrides": overrides, "augment": augment, "eval_data": eval_data,
            "protocol": protocol, "layer_decay": layer_decay, "drop_path": drop_path, "mixup": mixup,
            "cutmix": cutmix, "label_smoothing": label_smoothing, "warmup_epochs": warmup_epochs,
            "rand_augment": rand_augment, "random_erasing": random_erasing, "global_pool": global_pool,
            "min_lr": min_lr, "labels": labels, "labels_seed": labels_seed}
    resolved, slot = finetune_settings(args, base), _slot({"labels": labels})
    settings = settings_record("finetune", resolved, state, base)
    preset = resolved.get("preset", "convnet")
    if eval_data is None:
        require((state.get("data_info") or {}).get("num_classes", 1) > 0, unlabelled_message(run_dir, "fine-tuning"))
    from ..build import build_method_for

    method = build_method_for(base, dataset_info=state.get("data_info"))
    cfg = _finetune_config(base, state, method, run_dir / slot, ckpt, resolved, overrides, eval_data)
    if eval_data is not None:  # one clear line before training if the data has no labels
        labelled_data(run_dir, state, base, eval_data, "fine-tuning")
    shown = {k: resolved[k] for k in ("optimizer", "lr", "scale_lr", "weight_decay", *_OFF) if k in resolved}
    log(f"fine-tune protocol: {preset}{' (auto)' if protocol == 'auto' else ''}: "
         + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    res = _run_finetune(run_dir / slot, cfg, settings, epochs)
    result = {"protocol": "finetune", "preset": preset, "dataset": cfg["data"]["name"], "epochs": epochs,
              "batch_size": batch_size, "augment": augment,
              **{k: v for k, v in resolved.items() if k not in ("overrides", "eval_data", "epochs", "batch_size",
                                                                 "augment", "preset")},
              **res, "settings": settings}
    if baseline:
        result["untrained"] = _finetune_untrained(run_dir / f"{slot}_untrained", base, state, method, resolved,
                                                  overrides, eval_data, settings, epochs)
    result["saved"] = str(save_result(run_dir, slot, result))
    return result


def _finetune_untrained(out: Path, base: dict[str, Any], state: dict[str, Any], method: torch.nn.Module,
                        resolved: dict[str, Any], overrides: list[str] | None, eval_data: str | None,
                        settings: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The same fine-tune from the encoder the run started from, in ``out`` (``RUN/finetune_untrained``)."""
    init = out / "untrained_backbone.safetensors"
    cfg0 = _finetune_config(base, state, method, out, init, resolved, overrides, eval_data)

    def write_untrained(path: Path) -> None:
        """The encoder the run started from: rebuilt under its seed, as ``_features(untrained=True)``."""
        from ..export import export_backbone

        export_backbone(build_untrained(base, state.get("data_info")).backbone, path, base)

    res0 = _run_finetune(out, cfg0, {**settings, "step": 0, "untrained": True}, epochs, write_untrained)
    return {k: v for k, v in res0.items() if k not in ("history", "note")}


def _arguments(ft: argparse.ArgumentParser) -> None:
    ft.add_argument("--epochs", type=int, default=20)
    ft.add_argument("--protocol", choices=FINETUNE_PROTOCOLS, default="auto",
                    help="the preset for the options not given (auto: vit for a ViT run, else convnet)")
    ft.add_argument("--lr", type=float, default=None, help="absolute lr (default: the protocol's)")
    ft.add_argument("--batch-size", type=int, default=256)
    ft.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    ft.add_argument("--weight-decay", type=float, default=None)
    ft.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay (ViT; 1 = off)")
    ft.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (ViT)")
    ft.add_argument("--mixup", type=float, default=None, help="mixup alpha (0 = off)")
    ft.add_argument("--cutmix", type=float, default=None, help="CutMix alpha (0 = off)")
    ft.add_argument("--label-smoothing", type=float, default=None)
    ft.add_argument("--warmup-epochs", type=float, default=None)
    ft.add_argument("--min-lr", type=float, default=None, help="the cosine schedule's floor (MAE: 1e-6)")
    ft.add_argument("--rand-augment", default=None, metavar="SPEC",
                    help="timm RandAugment string after crop + flip (MAE: rand-m9-mstd0.5-inc1; none = off)")
    ft.add_argument("--random-erasing", type=float, default=None,
                    help="probability of timm's random erasing, pixel mode (MAE: 0.25; 0 = off)")
    ft.add_argument("--global-pool", action=argparse.BooleanOptionalAction, default=None,
                    help="ViT: classify the mean of the patch tokens through a fresh fc_norm, the encoder's last norm "
                    "dropped (MAE's default); --no-global-pool: the class token")
    ft.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="random-resized crops + flips (and the protocol's RandAugment / random erasing) while "
                    "fine-tuning (default); --no-augment trains on the test view, as the overlay paper's fine-tune")
    ft.add_argument("--labels", default=None, metavar="SHARE", help=LABELS_HELP)
    ft.add_argument("--labels-seed", type=int, default=0, help="which stratified draw of --labels")
    ft.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="training overrides of the fine-tune run")


OPTIMIZERS = ("sgd", "adamw", "adam", "lars")
_AT_MOST_ONE = ("layer_decay", "drop_path", "label_smoothing", "random_erasing")


def _check(settings: dict[str, Any]) -> None:
    require_positive(settings, "epochs", "batch_size", integer=True)
    require(isinstance(settings.get("augment", True), bool),
            f"finetune.augment must be true or false, got {settings.get('augment')!r}")
    require(settings.get("optimizer") in (None, *OPTIMIZERS),
            f"finetune.optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings.get('optimizer')!r}")
    require(settings.get("protocol", "auto") in FINETUNE_PROTOCOLS,
            f"finetune.protocol must be one of {', '.join(FINETUNE_PROTOCOLS)}, got {settings.get('protocol')!r}")
    for key in ("lr", "weight_decay", "layer_decay", "drop_path", "mixup", "cutmix", "label_smoothing",
                "warmup_epochs", "random_erasing", "min_lr"):
        value = settings.get(key)
        require(value is None or is_number(value),
                f"finetune.{key} must be a number >= 0 (or null: the protocol's value), got {value!r}")
        require(value is None or key not in _AT_MOST_ONE or value <= 1, f"finetune.{key} must be at most 1, got {value!r}")
    require(settings.get("lr") != 0, "finetune.lr must be > 0 (null: the protocol's value)")
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
    parse_labels(settings.get("labels"))


def _slot(settings: dict[str, Any]) -> str:
    return "finetune" + labels_suffix(settings.get("labels"))


PROTOCOLS.add("finetune", Protocol(
    name="finetune", help="fine-tune the whole encoder with a linear head", evaluate=evaluate_finetune,
    add_arguments=_arguments, check=_check, record=finetune_settings, slot_of=_slot, order=30,
    paper_label="paper fine-tune",
    description="Fine-tune the encoder + a linear head. --protocol auto picks vit for a ViT run (MAE's fine-tune: "
                "AdamW, lr 5e-4 per 256 images of the global batch, wd 0.05, layer decay 0.65 (0.75 above 12 "
                "blocks), drop path 0.1, mixup 0.8, CutMix 1.0, label smoothing 0.1, RandAugment "
                "rand-m9-mstd0.5-inc1, random erasing 0.25, global average pooling with fc_norm, min lr 1e-6, "
                "warm-up 5 epochs or 10 %% of them below 50) and convnet otherwise (SGD 0.01, wd 1e-4, nothing "
                "else); every option given overrides the protocol's value.",
    columns=(Column("fine-tune best / last", "finetune", (("finetune_best_top1", "best_top1"),
                                                           ("finetune_last_top1", "last_top1"),
                                                           ("finetune_best_epoch", "best_epoch")), shown=2),)))
