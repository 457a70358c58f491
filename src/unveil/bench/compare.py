"""``unveil compare``: every corruption family on one budget, on the user's own images.

Each contender is one shipped recipe (its family's), run on the same data with what ``auto`` picks for that
data (stem, image size, batch, precision). With ``budget_s`` every contender gets the same pretraining
wall-clock: a few timed steps measure its step time, and its schedule is planned to end at the budget
(``train.max_steps``: warm-up and decay complete), so the methods get different numbers of steps and the
report says how many. With ``epochs`` they get the same epochs instead. Then each is scored on one split:
kNN, a linear probe on all labels and on 1 % and 10 % of them, each beside its own untrained encoder, and
RankMe (label-free); raw pixels are the other floor. A finished contender is kept: a killed compare goes
on with the next unfinished one.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, require
from ..io import atomic_write_text
from .compare_report import write_report

# one contender per family: its name -> the shipped recipe that stands for the family
FAMILIES: dict[str, str] = {
    "simclr": "simclr_cifar10", "byol": "byol_cifar10", "mocov2": "mocov2_cifar10", "unmix": "moco_unmix_cifar10",
    "mixdet": "mixdet_a2_cifar10", "mscn": "mscn_simclr_7_multimask", "mae": "mae_cifar10",
    "mvmae": "mvmae_cifar10", "overlay": "overlay_cifar10", "context-patch": "context_patch_cifar100",
    "supervised": "supervised_cifar10",
}
CALIBRATION_STEPS = 4  # timed steps per contender (the first is left out: allocation, first-touch)
LOW_SHOT = ("1%", "10%")
CURVE_POINTS = 5  # kNN points along each pretraining (labelled data scored on itself)


def _log(message: str) -> None:
    print(f"unveil compare: {message}", file=sys.stderr, flush=True)


def parse_budget(text: str) -> float:
    """``90s``, ``20m``, ``1.5h`` -> seconds (> 0); anything else is one line."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh])\s*", str(text))
    require(match is not None and float(match.group(1)) > 0,
            f"--budget must be a time like 90s, 20m or 1.5h, got {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def pick_methods(names: list[str] | None, labelled: bool) -> list[str]:
    """The contenders: the given names (checked), else every family (supervised only with labels)."""
    if not names:
        return [n for n in FAMILIES if n != "supervised" or labelled]
    unknown = [n for n in names if n not in FAMILIES]
    require(not unknown, f"unknown method(s) {', '.join(unknown)} for compare: choose from {', '.join(FAMILIES)}")
    require(labelled or "supervised" not in names, "supervised needs labels: the pretraining data is a flat folder")
    return list(dict.fromkeys(names))


@dataclass
class Contender:
    """One method's plan: its recipe with the shared overrides, the step time measured and the steps given."""

    name: str
    recipe: str
    overrides: list[str]
    step_s: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    steps_per_epoch: int | None = None


def shared_overrides(data: str, seed: int, extra: list[str]) -> list[str]:
    """Every contender on the same data with what auto picks for it."""
    return [f"data.name={data}", "data.image_size=null", "train.batch_size=auto", "train.precision=auto",
            f"train.seed={seed}", "train.progress=false", "train.monitor=none", *extra]


STEMS = ("auto", "cifar", "standard")


def stem_overrides(recipe: str, image_size: int, stem: str = "auto") -> list[str]:
    """The ResNet stem of a contender. ``auto``: what auto picks for the data (the CIFAR stem up to 32 px for the
    encoders; the autoencoders decide their own, CIFAR-style up to 64 px, and the backbone section follows them).
    ``cifar`` / ``standard`` force it on every contender that has a choice: on a CPU the CIFAR stem at 32 px costs
    ~7x the standard stem's time per image, so a short budget gets a seventh of the steps. ViTs have no stem and
    towers built with only the CIFAR stem (the context-patch AE's) keep it."""
    from ..build import _takes, only_cifar_stem
    from ..config import resolve

    cfg = resolve(recipe)
    if cfg["method"]["name"] == "denoising_ae":
        cifar = image_size <= 64 if stem == "auto" else stem == "cifar"
        return [f"backbone.cifar_stem={str(cifar).lower()}"] + ([] if stem == "auto" else [f"method.cifar={str(cifar).lower()}"])
    name = cfg["backbone"]["name"]
    if stem == "auto" or _takes(name, "img_size") or only_cifar_stem(name):
        return ["backbone.cifar_stem=auto"]
    return [f"backbone.cifar_stem={str(stem == 'cifar').lower()}"]


def calibrate(c: Contender, scratch: Path) -> Contender:
    """Time ``CALIBRATION_STEPS`` steps of the contender on the data: seconds per step, the median of all
    but the first (allocation, first touch), from the images per second the engine logs every step."""
    from ..config import resolve
    from ..runs.logs import STEP_LOG, read_csv
    from ..train import engine

    out = scratch / c.name
    shutil.rmtree(out, ignore_errors=True)
    engine.train(resolve(c.recipe, [*c.overrides, f"out={out}", f"train.epochs={CALIBRATION_STEPS}",
                                    f"train.max_steps={CALIBRATION_STEPS}", "train.log_every_steps=1"]))
    rates = [float(r["images_per_s"]) for r in read_csv(out / STEP_LOG)][1:]
    require(bool(rates), f"compare: timing {c.name} logged no steps; is the data large enough for one batch?")
    c.step_s = c.batch_size / statistics.median(rates)
    shutil.rmtree(out, ignore_errors=True)
    return c


def plan_steps(c: Contender, budget_s: float | None, epochs: int | None) -> Contender:
    """The steps a contender gets: the budget over its measured step time, or ``epochs`` full passes."""
    if budget_s is not None:
        c.steps = max(1, int(budget_s / c.step_s))
    else:
        c.steps = epochs * c.steps_per_epoch
    return c


def pretrain_config(c: Contender, out: Path, monitor: bool = False) -> dict[str, Any]:
    """The contender's run: its recipe on the shared data, ``c.steps`` steps, warm-up at most a tenth of them;
    with ``monitor`` (labelled pretraining data) the kNN monitor draws its accuracy against training time."""
    from ..config import resolve

    epochs = math.ceil(c.steps / c.steps_per_epoch)
    base = resolve(c.recipe, [*c.overrides, f"out={out / c.name}", f"train.epochs={epochs}"])
    warmup = min(float(base["train"].get("warmup_epochs") or 0.0), 0.1 * c.steps / c.steps_per_epoch)
    return resolve(c.recipe, [*c.overrides, f"out={out / c.name}", f"train.epochs={epochs}",
                              f"train.max_steps={c.steps}", f"train.warmup_epochs={warmup:.6g}",
                              *(_monitor_overrides(epochs) if monitor else [])])


def _monitor_overrides(epochs: int) -> list[str]:
    """The engine's kNN monitor at about ``CURVE_POINTS`` evenly spaced epochs (and the untrained encoder first):
    the points of accuracy against training time. Its own time is left out of the curve's clock."""
    every = max(1, round(epochs / CURVE_POINTS))
    return ["train.monitor=knn", f"train.monitor_every_epochs={every}"]


def training_curve(run_dir: Path, batch_size: int) -> tuple[list[dict[str, float]], float]:
    """(seconds of training steps, kNN top-1) at each monitored epoch, the untrained encoder at 0 s; and the
    monitor's own seconds in all (left out of the budget).

    The clock is the training steps' own: each logged interval's images over its logged images/s (which
    leaves out the monitor and the checkpoints), summed, and read at the monitored step by interpolating
    between the logged steps."""
    import numpy as np

    from ..runs.logs import EPOCH_LOG, STEP_LOG, read_csv

    steps, seconds = [0], [0.0]
    for row in read_csv(run_dir / STEP_LOG):
        step, rate = int(row["step"]), float(row.get("images_per_s") or 0.0)
        if step > steps[-1] and rate > 0:
            seconds.append(seconds[-1] + (step - steps[-1]) * batch_size / rate)
            steps.append(step)
    monitored = read_csv(run_dir / EPOCH_LOG)
    curve = [{"step": int(r["step"]), "train_s": round(float(np.interp(int(r["step"]), steps, seconds)), 2),
              "knn_top1": float(r["knn_top1"])} for r in monitored if r.get("knn_top1") is not None]
    return curve, sum(float(r.get("monitor_s") or 0.0) for r in monitored)


def pretrain(c: Contender, out: Path, monitor: bool = False) -> tuple[Path, float]:
    """Pretrain (or continue a killed pretraining, or keep a finished one); the wall-clock it used in all."""
    from ..runs.checkpoint import CKPT_NAME
    from ..runs.logs import SUMMARY
    from ..train import engine

    run_dir, clock = out / c.name, out / c.name / "compare_pretrain_s.json"
    used = json.loads(clock.read_text())["seconds"] if clock.is_file() else 0.0
    if (run_dir / SUMMARY).is_file() and (run_dir / CKPT_NAME).is_file():
        return run_dir, used
    start = time.perf_counter()
    resume = run_dir if (run_dir / CKPT_NAME).is_file() else None
    engine.train(pretrain_config(c, out, monitor), resume=resume)
    used += time.perf_counter() - start
    atomic_write_text(clock, json.dumps({"seconds": used}))
    return run_dir, used


def label_free(run_dir: Path, max_images: int = 4096) -> dict[str, float]:
    """RankMe of the trained encoder and of the encoder it started from, on the pretraining images."""
    from ..build import data_info_of
    from ..eval.features import extract
    from ..eval.rankme import rankme
    from ..precision import pick_device, pick_precision
    from ..runs.checkpoint import load_run
    from ..runs.weights import build_untrained

    method, cfg, dataset = load_run(run_dir)
    device = pick_device("auto")
    precision = pick_precision(cfg["train"]["precision"], device)
    images = dataset.train.images[:max_images]
    untrained = build_untrained(cfg, data_info_of(dataset))
    scores = {}
    for key, encoder in (("rankme", method), ("rankme_untrained", untrained)):
        encoder.to(device).eval()
        scores[key] = rankme(extract(encoder.embed, images, device, precision))
    return scores


def scores(run_dir: Path, eval_data: str | None, labelled: bool, linear_epochs: int) -> dict[str, Any]:
    """kNN, the linear probe on all labels and on ``LOW_SHOT`` shares (each with its untrained encoder),
    and the label-free RankMe; without labels only RankMe."""
    from ..protocols.knn import evaluate_knn
    from ..protocols.linear import evaluate_linear

    out: dict[str, Any] = label_free(run_dir)
    if not labelled:
        return out
    knn = evaluate_knn(run_dir, eval_data=eval_data, baseline=True)
    out.update(knn=knn["top1"], knn_untrained=knn["untrained"]["top1"], test_images=knn["test_images"],
               train_images=knn["train_images"])
    for labels in (None, *LOW_SHOT):
        if linear_epochs <= 0:
            break
        lin = evaluate_linear(run_dir, epochs=linear_epochs, eval_data=eval_data, baseline=True, labels=labels)
        key = "linear" if labels is None else f"linear_{labels.rstrip('%')}pct"
        out.update({key: lin["last_top1"], f"{key}_untrained": lin["untrained"]["last_top1"],
                    f"{key}_labels": lin["train_labels"]})
    return out


def run_contender(c: Contender, out: Path, eval_data: str | None, labelled: bool, linear_epochs: int) -> dict[str, Any]:
    """Pretrain and score one contender, or read back what a finished one saved with the same plan."""
    saved = out / c.name / "compare.json"
    plan = asdict(c)
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("plan") == plan and old.get("linear_epochs") == linear_epochs:
            return old
    monitor = labelled and eval_data is None  # the monitor scores on the pretraining data's own test split
    run_dir, used = pretrain(c, out, monitor)
    curve, monitor_s = training_curve(run_dir, c.batch_size) if monitor else ([], 0.0)
    used -= monitor_s  # the monitor's own time is not pretraining: the budget compares training
    result = {"name": c.name, "recipe": c.recipe, "plan": plan, "linear_epochs": linear_epochs,
              "pretrain_s": used, "images_seen": c.steps * c.batch_size, "curve": curve,
              **scores(run_dir, eval_data, labelled, linear_epochs)}
    atomic_write_text(saved, json.dumps(result, indent=2))
    return result


def _data(data: str, eval_data: str | None, seed: int, extra: list[str]) -> tuple[Any, Any]:
    """The pretraining data as every contender sees it, and the labelled data it is scored on (or None)."""
    from ..build import load_dataset_for
    from ..config import resolve
    from ..data import load_data

    dataset = load_dataset_for(resolve("simclr_cifar10", shared_overrides(data, seed, extra)))
    require(len(dataset.train.images) >= 4, f"--data {data} has {len(dataset.train.images)} training images: "
            "compare needs at least 4 (two steps of a batch of 2)")
    if eval_data is None:
        return dataset, dataset if dataset.num_classes > 0 else None
    scored = load_data(str(eval_data), image_size=dataset.image_size)
    require(scored.num_classes > 0, f"--eval-data {eval_data} has no labels (a flat folder): give a folder of class "
            "folders, a registered dataset name or a labelled Parquet folder")
    return dataset, scored


def plan(names: list[str], dataset: Any, out: Path, request: dict[str, Any], budget_s: float | None,
         epochs: int | None, extra: list[str]) -> list[Contender]:
    """Each contender's steps, measured once and kept in ``plan.json``: a resumed compare keeps its plan."""
    from ..train.engine import auto_batch_size

    saved = out / "plan.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("request") == request:
            return [Contender(**c) for c in old["contenders"]]
        raise UserError(f"{out} holds a compare with other settings ({saved}): give --out another folder or "
                        "remove it")
    batch, _ = auto_batch_size(len(dataset.train.images))
    contenders = []
    for name in names:
        overrides = [*shared_overrides(request["data"], request["seed"], []),
                     *stem_overrides(FAMILIES[name], dataset.image_size, request.get("stem", "auto")), *extra]
        c = Contender(name, FAMILIES[name], overrides,
                      batch_size=batch, steps_per_epoch=len(dataset.train.images) // batch)
        if budget_s is not None:
            _log(f"timing {name} ({CALIBRATION_STEPS} steps)")
            calibrate(c, out / "_timing")
        contenders.append(plan_steps(c, budget_s, epochs))
    shutil.rmtree(out / "_timing", ignore_errors=True)
    atomic_write_text(saved, json.dumps({"request": request, "contenders": [asdict(c) for c in contenders]}, indent=2))
    return contenders


def run_compare(data: str, out: str | Path, *, eval_data: str | None = None, budget: str | None = None,
                epochs: int | None = None, methods: list[str] | None = None, seed: int = 0, linear_epochs: int = 30,
                overrides: list[str] | None = None, stem: str = "auto") -> Path:
    """Plan, pretrain and score every contender (continuing a killed compare), then write the report."""
    require((budget is None) != (epochs is None), "give one of --budget (e.g. 20m) or --epochs N")
    require(epochs is None or epochs > 0, f"--epochs must be > 0, got {epochs}")
    budget_s = parse_budget(budget) if budget is not None else None
    pick_methods(methods, labelled=True)  # unknown names: one line before any data is read
    require(stem in STEMS, f"--stem must be one of {', '.join(STEMS)}, got {stem!r}")
    out, extra = Path(out), list(overrides or [])
    out.mkdir(parents=True, exist_ok=True)
    dataset, scored = _data(data, eval_data, seed, extra)
    names = pick_methods(methods, dataset.num_classes > 0)
    request = {"data": data, "eval_data": eval_data, "budget_s": budget_s, "epochs": epochs, "methods": names,
               "seed": seed, "linear_epochs": linear_epochs, "overrides": extra,
               **({"stem": stem} if stem != "auto" else {})}  # absent when auto: earlier plans still resume
    contenders = plan(names, dataset, out, request, budget_s, epochs, extra)
    results, failed = [], {}
    for i, c in enumerate(contenders, 1):
        _log(f"[{i}/{len(contenders)}] {c.name} ({c.recipe}): {c.steps} steps of {c.batch_size} images"
             + (f", {c.step_s:.2f} s/step measured" if c.step_s else ""))
        try:
            results.append(run_contender(c, out, eval_data, scored is not None, linear_epochs))
        except UserError as exc:  # one method's failure is recorded; the others still run
            failed[c.name] = str(exc)
            _log(f"[{i}/{len(contenders)}] {c.name} failed: {exc}")
            continue
        _log(f"[{i}/{len(contenders)}] {c.name}: " + _one_line(results[-1]))
    require(bool(results), f"every method failed: {'; '.join(f'{k}: {v}' for k, v in failed.items())}")
    report = write_report(out, request, results, _floors(scored), dataset, failed)
    _log(f"report: {report}")
    require(not failed, f"{len(failed)} of {len(contenders)} methods failed ({', '.join(failed)}); the report has "
            f"the others: {report}")
    return report


def _one_line(r: dict[str, Any]) -> str:
    parts = [f"pretrained {r['pretrain_s'] / 60:.1f} min"]
    if "knn" in r:
        parts.append(f"kNN {r['knn']:.1f} % (untrained {r['knn_untrained']:.1f} %)")
    parts.append(f"RankMe {r['rankme']:.1f} (untrained {r['rankme_untrained']:.1f})")
    return ", ".join(parts)


def _floors(scored: Any) -> dict[str, float]:
    """Raw pixels' kNN on the scored data (the encoders' own untrained scores stand in their rows)."""
    from ..eval.pixels import pixel_knn

    return {} if scored is None else {"raw_pixels": pixel_knn(scored)["top1"]}
