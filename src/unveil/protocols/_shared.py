"""What every protocol shares: reading a run, the settings record, the labelled data to evaluate on, and the
feature cache (frozen features extracted once per checkpoint, data and precision; the untrained encoder's
too). Not a protocol itself (the registry skips ``_`` modules)."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError, require
from ..eval.features import extract
from ..io import NoSpaceError, atomic_write, atomic_write_text, tensor_bytes
from ..precision import pick_device, pick_precision
from ..runs.checkpoint import load_checkpoint, read_config, resolve_run
from ..runs.weights import build_untrained
from .settings import plain

FEATURES_VERSION = 2  # bump when extraction changes what the cached features hold
TEST_SELECTION_NOTE = "best_* selects the epoch on the test set (as the overlay paper does); last_* does not"


def log(message: str) -> None:
    print(f"unveil eval: {message}", file=sys.stderr, flush=True)


def save_result(run_dir: Path, kind: str, result: dict[str, Any]) -> Path:
    """``eval_<kind>.json`` in the run directory, written whole or not at all."""
    path = run_dir / f"eval_{kind}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    return path


def read_run(run: str | Path) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
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


def settings_record(kind: str, args: dict[str, Any], state: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation was computed with: the protocol, its arguments, the checkpoint step and the data."""
    eval_data = args.get("eval_data")
    if "overrides" in args:
        args = {**args, "overrides": list(args["overrides"] or [])}
    return plain({"protocol": kind, **{k: v for k, v in args.items() if k != "eval_data"},
                  "step": int(state["step"]), "data": data_record(cfg, state, eval_data)})


SUMMARIES: dict[tuple[str, int, int], tuple[dict[str, Any], dict[str, Any]]] = {}


def run_summary(run: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(step and data_info, config) of a run's checkpoint, read once per checkpoint file version:
    a suite asks for every entry's settings each time it writes its table."""
    run_dir, ckpt = resolve_run(run)
    st = ckpt.stat()
    key = (str(ckpt.resolve()), st.st_mtime_ns, st.st_size)
    if key not in SUMMARIES:
        _, _, state, cfg = read_run(run)
        SUMMARIES[key] = ({"step": state["step"], "data_info": state.get("data_info")}, cfg)
    return SUMMARIES[key]


def unlabelled_message(run_dir: Path, what: str) -> str:
    return (f"{run_dir} was trained on unlabelled images (a flat folder, no classes): {what} needs labels; "
            "give labelled data with --eval-data DATA (a folder of class folders, a registered dataset name "
            "or a Parquet folder; eval_data=... in Python)")


def labelled_data(run_dir: Path, state: dict[str, Any], cfg: dict[str, Any], eval_data: str | None, what: str):
    """The dataset to evaluate on: the run's own, or ``eval_data`` decoded at the run's image size."""
    from ..build import load_dataset_for
    from ..data import load_data

    if eval_data is None:
        require((state.get("data_info") or {}).get("num_classes", 1) > 0, unlabelled_message(run_dir, what))
        dataset = load_dataset_for(cfg)
        require(dataset.num_classes > 0, unlabelled_message(run_dir, what))
        return dataset
    d = cfg["data"]
    size = (state.get("data_info") or {}).get("image_size") or d["image_size"]
    dataset = load_data(str(eval_data), root=d["root"], image_size=size, test_fraction=d["test_fraction"],
                        split_seed=d["split_seed"])
    require(dataset.num_classes > 0, f"--eval-data {eval_data} has no labels (a flat folder): {what} needs a "
            "folder of class folders, a registered dataset name or a labelled Parquet folder")
    return dataset


def read_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception:
        return None  # damaged cache: extract again


def features_of(run_dir: Path, state: dict[str, Any], cfg: dict[str, Any], device: str, eval_data: str | None,
              what: str, untrained: bool = False, recalibrate_bn: bool = False,
              features: str = "backbone") -> tuple[dict[str, torch.Tensor], dict, Any]:
    """Features of the trained encoder, or with ``untrained`` of the encoder the run started from
    (rebuilt under the run's seed exactly as the engine builds it: a ``train.epochs=0`` run's weights).
    ``features="head"``: the method's head embedding (``head_embedder``), cached under its own name."""
    from ..build import build_method_for

    dataset = labelled_data(run_dir, state, cfg, eval_data, what)
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
        hit = read_cache(cache, key)
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
    # split BatchNorm (MoCo's) normalises equal shares of a batch: every chunk a multiple of its splits
    multiple = math.lcm(1, *(int(getattr(m, "num_splits", 1)) for m in norms))
    try:
        for chunk in images[:max_images].split(batch_size):
            chunk = chunk[: len(chunk) // multiple * multiple]
            if len(chunk):
                with autocast(device, precision):
                    method.embed(chunk.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
    return len(norms)


def head_embedder(method: torch.nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The method's head embedding, for kNN with ``features: head`` (paper 5's monitor: the 128-d
    output of MoCo's query head, docs/design.md 5.1): the method's ``embed_head`` (MoCo and MixDet: the
    query head; SimCLR: its 128-d projection; BYOL: its 256-d projection, not the predictor); methods
    without one fail in one line."""
    if method.implements("embed_head"):
        return method.embed_head
    raise UserError(f"kNN with features=head: method {name} has no projection head to embed with (moco, mixdet, "
                    "simclr and byol have one): use features=backbone")
