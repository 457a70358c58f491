"""Evaluation protocols on a run: kNN, linear probe (cached features), fine-tuning.

Each returns a metrics dict and saves it as ``eval_<kind>.json`` in the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_write, atomic_write_text
from ..train.checkpoint import load_checkpoint, load_run, resolve_run
from ..train.precision import pick_device, pick_precision
from .features import extract
from .knn import knn_accuracy
from .linear import linear_probe


def _save(run_dir: Path, kind: str, result: dict[str, Any]) -> Path:
    path = run_dir / f"eval_{kind}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


def cached_features(run: str | Path, device: str = "auto") -> tuple[dict[str, torch.Tensor], dict, Any]:
    """Train/test features of the run's final checkpoint, extracted once and cached beside it."""
    run_dir, ckpt = resolve_run(run)
    step = int(load_checkpoint(ckpt)["step"])
    cache = run_dir / f"features_step{step}.safetensors"
    dev = pick_device(device)
    method, cfg, dataset = load_run(run, device=dev)
    if cache.is_file():
        try:
            return load_file(str(cache)), cfg, dataset
        except Exception:
            pass  # damaged cache: extract again
    precision = pick_precision(cfg["train"]["precision"], dev)
    feats = {
        "train_x": extract(method.embed, dataset.train.images, dev, precision),
        "train_y": dataset.train.labels.clone(),
        "test_x": extract(method.embed, dataset.test.images, dev, precision),
        "test_y": dataset.test.labels.clone(),
    }
    atomic_write(cache, lambda tmp: save_file(feats, tmp))
    return feats, cfg, dataset


def evaluate_knn(run: str | Path, k: int = 200, temperature: float = 0.1, device: str = "auto") -> dict[str, Any]:
    feats, cfg, dataset = cached_features(run, device)
    acc = knn_accuracy(feats["train_x"], feats["train_y"], feats["test_x"], feats["test_y"], dataset.num_classes,
                       k=k, temperature=temperature)
    result = {"protocol": "knn", "k": k, "temperature": temperature, "dataset": dataset.name,
              "train_images": len(feats["train_y"]), "test_images": len(feats["test_y"]), **acc}
    result["saved"] = str(_save(resolve_run(run)[0], "knn", result))
    return result


def evaluate_linear(run: str | Path, epochs: int = 100, lr: float = 1e-3, batch_size: int = 256,
                    optimizer: str = "adam", weight_decay: float = 0.0, device: str = "auto") -> dict[str, Any]:
    feats, cfg, dataset = cached_features(run, device)
    res = linear_probe(feats["train_x"], feats["train_y"], feats["test_x"], feats["test_y"], dataset.num_classes,
                       epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay)
    result = {"protocol": "linear", "dataset": dataset.name, "optimizer": optimizer, "lr": lr,
              "feature_dim": int(feats["train_x"].shape[1]), **res,
              "note": "best_* selects the epoch on the test set (as the overlay paper does); last_* does not"}
    result["saved"] = str(_save(resolve_run(run)[0], "linear", result))
    return result


def evaluate_finetune(run: str | Path, epochs: int = 20, lr: float = 0.01, batch_size: int = 256,
                      optimizer: str = "sgd", weight_decay: float = 1e-4, overrides: list[str] | None = None) -> dict[str, Any]:
    """Fine-tune the whole backbone + a linear head with labels (the supervised method), from the run's weights."""
    from ..config import merge, parse_overrides, validate
    from ..train.engine import train
    from ..train.logs import EPOCH_LOG, read_csv

    run_dir, ckpt = resolve_run(run)
    base = load_checkpoint(ckpt)["config"]
    method, _, _ = load_run(run, load_data=False)
    spec = getattr(method, "backbone_spec", None) or base["backbone"]
    out = run_dir / "finetune"
    cfg = merge(base, {"out": str(out)})
    cfg["method"] = {"name": "supervised", "normalize": bool(getattr(method, "normalized_inputs", True))}
    cfg["backbone"] = dict(spec)
    cfg["train"].update({"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                         "weight_decay": weight_decay, "monitor": "classify", "monitor_every_epochs": 1,
                         "init_backbone": str(ckpt), "warmup_epochs": 0.0, "max_steps": None, "scale_lr": False,
                         "freeze_backbone": False, "monitor_test_size": None})  # score on the whole test split
    if overrides:
        cfg = merge(cfg, parse_overrides(overrides))
    validate(cfg)
    if (out / "last.ckpt").exists():
        import shutil

        shutil.rmtree(out)
    train(cfg)
    history = [r for r in read_csv(out / EPOCH_LOG) if r.get("test_top1") is not None]
    best = max(history, key=lambda r: r["test_top1"])
    result = {"protocol": "finetune", "dataset": base["data"]["name"], "epochs": epochs, "lr": lr,
              "last_top1": history[-1]["test_top1"], "last_top5": history[-1]["test_top5"],
              "best_top1": best["test_top1"], "best_top5": best["test_top5"], "best_epoch": int(best["epoch"]),
              "history": history,
              "note": "best_* selects the epoch on the test set (as the overlay paper does); last_* does not"}
    result["saved"] = str(_save(run_dir, "finetune", result))
    return result
