"""Weighted kNN on frozen features (``unveil eval knn``): the backbone's pooled features, or with
``features: head`` the method's head embedding (paper 5's monitor), saved side by side as ``eval_knn.json``
and ``eval_knn_head.json``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import require
from ..eval.knn import knn_accuracy
from ._shared import BN_RECALIBRATION_IMAGES, features_of, read_run, save_result, settings_record
from .base import PROTOCOLS, Column, Protocol, require_positive

KNN_FEATURES = ("backbone", "head")


def evaluate_knn(run: str | Path, k: int = 200, temperature: float = 0.1, device: str = "auto", *,
                 features: str = "backbone", eval_data: str | None = None, baseline: bool = False) -> dict[str, Any]:
    """Weighted kNN (cosine, ``exp(sim / T)`` votes) of the test features against the train features.

    ``features``: ``backbone`` (the pooled backbone features, unveil's evaluation for every method;
    saved as ``eval_knn.json``) or ``head`` (the head embedding, ``head_embedder``; saved as
    ``eval_knn_head.json``, so the two stand side by side). ``baseline``: also score the untrained
    encoder the run started from, same data, features and protocol (``result["untrained"]``), so the
    number never stands alone."""
    require(features in KNN_FEATURES, f"knn features must be one of {', '.join(KNN_FEATURES)}, got {features!r}")
    run_dir, _, state, cfg = read_run(run)
    args = {"k": k, "temperature": temperature, **({"features": features} if features != "backbone" else {}),
            "eval_data": eval_data}
    settings = settings_record("knn", args, state, cfg)
    feats, cfg, dataset = features_of(run_dir, state, cfg, device, eval_data, "kNN", features=features)
    acc = knn_accuracy(feats["train_x"], feats["train_y"], feats["test_x"], feats["test_y"], dataset.num_classes,
                       k=k, temperature=temperature)
    result = {"protocol": "knn", "k": k, "temperature": temperature, "features": features, "dataset": dataset.name,
              "feature_dim": int(feats["train_x"].shape[1]), "train_images": len(feats["train_y"]),
              "test_images": len(feats["test_y"]), **acc, "settings": settings}
    if baseline:
        base, _, _ = features_of(run_dir, state, cfg, device, eval_data, "kNN", untrained=True, features=features)
        result["untrained"] = knn_accuracy(base["train_x"], base["train_y"], base["test_x"], base["test_y"],
                                           dataset.num_classes, k=k, temperature=temperature)
        # the stronger control: the same untrained weights with BatchNorm statistics estimated on the data
        bn, _, _ = features_of(run_dir, state, cfg, device, eval_data, "kNN", untrained=True, recalibrate_bn=True,
                               features=features)
        result["untrained_bn_recalibrated"] = {
            **knn_accuracy(bn["train_x"], bn["train_y"], bn["test_x"], bn["test_y"], dataset.num_classes, k=k,
                           temperature=temperature),
            "note": f"untrained weights, BatchNorm running statistics re-estimated on {BN_RECALIBRATION_IMAGES} "
                    "training images (eval view); without BatchNorm layers this equals 'untrained'"}
    result["saved"] = str(save_result(run_dir, _slot({"features": features}), result))
    return result


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--t", dest="temperature", metavar="T", type=float, default=0.1, help="temperature")
    p.add_argument("--features", choices=KNN_FEATURES, default="backbone",
                   help="backbone: pooled encoder features (eval_knn.json); head: the projection head's output, "
                        "paper 5's monitor (eval_knn_head.json)")


def _check(settings: dict[str, Any]) -> None:
    require_positive(settings, "k", integer=True)
    require_positive(settings, "temperature")
    require(settings.get("features", "backbone") in KNN_FEATURES,
            f"knn.features must be one of {', '.join(KNN_FEATURES)}, got {settings.get('features')!r}")


def _record(args: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Records made before kNN on the head existed (no ``features``) stay valid for the backbone."""
    return {k: v for k, v in args.items() if not (k == "features" and v == "backbone")}


def _slot(settings: dict[str, Any]) -> str:
    return "knn_head" if settings.get("features") == "head" else "knn"


PROTOCOLS.add("knn", Protocol(
    name="knn", help="weighted kNN on frozen features", evaluate=evaluate_knn, add_arguments=_arguments,
    check=_check, record=_record, slot_of=_slot, order=10, paper_label="paper kNN",
    columns=(Column("kNN", "knn", (("knn_top1", "top1"),)),
             Column("kNN head", "knn_head", (("knn_head_top1", "top1"),)))))
