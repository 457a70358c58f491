"""``unveil demo``: the README's main job, end to end in about ten minutes on a 2-core CPU.

A short self-supervised pretrain on CIFAR-10, and -- because a kNN number means nothing on its
own -- the two baselines it must beat, measured with the same bank, queries, k and T: the *same*
encoder left untrained (the recipe with ``train.epochs=0``) and kNN on the raw, normalised pixels.
Then a linear probe of the untrained and the pretrained encoder, a bar chart of the gap, the
kNN-vs-epoch curve with the baselines as horizontal lines, sample views, and a Markdown report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import require
from ..io import atomic_write_text

DEMO_RECIPES = ("simclr_cifar10_demo",)  # each is pretrained and compared with its own untrained encoder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="SimCLR on CIFAR-10 vs untrained encoder vs raw pixels: pretrain, evaluate, "
                                    "plot, report (~10 min on CPU)")
    p.add_argument("--out", default="runs/demo", help="where the runs and the report go")
    p.add_argument("--recipe", action="append", dest="recipes", metavar="NAME",
                   help=f"demo recipe(s) to pretrain (repeatable; default: {', '.join(DEMO_RECIPES)})")
    p.add_argument("--epochs", type=int, help="pretraining epochs (default from the demo recipe)")
    p.add_argument("--subset", type=int, help="training images to use (default from the demo recipe)")
    p.add_argument("--linear-epochs", type=int, default=30, help="linear-probe epochs (0: no linear probe)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="any recipe override, e.g. train.batch_size=128")
    p.set_defaults(func=run)


def _label(cfg: dict[str, Any]) -> str:
    m = cfg["method"]
    return m["name"] if m["name"] != "denoising_ae" else f"{m.get('corruption', 'overlay')} AE"


def _linear(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    from ..protocols.linear import evaluate_linear

    if epochs <= 0:
        return None
    res = evaluate_linear(run_dir, epochs=epochs)
    return {k: v for k, v in res.items() if k != "history"}


def _pretrain_and_baseline(recipe: str, out: Path, overrides: list[str], linear_epochs: int) -> dict[str, Any]:
    """The recipe's untrained encoder (epochs=0) and its pretrained one, each through kNN and the linear probe."""
    from ..config import resolve
    from ..protocols.knn import evaluate_knn
    from ..train.engine import train

    cfg = resolve(recipe, overrides + [f"out={out / 'pretrain'}"])
    untrained_dir = train(resolve(recipe, overrides + [f"out={out / 'untrained'}", "train.epochs=0"]))
    untrained = {"run": str(untrained_dir), "knn": evaluate_knn(untrained_dir), "linear": _linear(untrained_dir, linear_epochs)}
    start = time.perf_counter()
    run_dir = train(cfg)
    pretrain_s = time.perf_counter() - start
    pretrained = {"run": str(run_dir), "knn": evaluate_knn(run_dir), "linear": _linear(run_dir, linear_epochs)}
    from ..runs.checkpoint import load_checkpoint

    history = [r for r in load_checkpoint(run_dir / "last.ckpt")["history"] if "knn_top1" in r]
    return {"recipe": recipe, "label": _label(cfg), "config": cfg, "pretrain_seconds": pretrain_s,
            "untrained": untrained, "pretrained": pretrained, "history": history}


def _curve(r: dict[str, Any]) -> list[tuple[float, float]]:
    """(epoch, kNN top-1) of the pretraining, from the untrained encoder (epoch 0) on."""
    points = [(row["epoch"], row["knn_top1"]) for row in r["history"]]
    if not points or points[0][0] != 0:  # the engine's monitor did not measure epoch 0: use the demo's own number
        points.insert(0, (0, r["untrained"]["knn"]["top1"]))
    return points


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def run(args: argparse.Namespace) -> int:
    from ..eval.pixels import pixel_knn
    from ..runs.checkpoint import load_run

    out = Path(args.out)
    recipes = args.recipes or list(DEMO_RECIPES)
    require(not (out / "demo.json").exists() and not any((out / r / "pretrain" / "last.ckpt").exists() for r in recipes),
            f"{out} already holds a demo: remove it or give --out another folder")
    start = time.perf_counter()
    results = [_pretrain_and_baseline(r, out / r, _overrides(args), args.linear_epochs) for r in recipes]

    # Raw pixels: the first run's own dataset (same subset, bank and queries), its normalisation.
    first = results[0]
    method, _, dataset = load_run(first["pretrained"]["run"])
    knn = first["pretrained"]["knn"]
    pixels = pixel_knn(dataset, k=knn["k"], temperature=knn["temperature"])
    figures = _figures(out, method, dataset, results, pixels)
    total_s = time.perf_counter() - start

    report = out / "report.md"
    atomic_write_text(report, _report(out, results, pixels, dataset, args.linear_epochs, total_s))
    summary = {
        "raw_pixels": pixels,
        "methods": {r["label"]: {k: r[k] for k in ("recipe", "pretrain_seconds", "untrained", "pretrained", "history")}
                    for r in results},
        "total_seconds": total_s,
        "figures": [str(f) for f in figures],
    }
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2))
    parts = []
    for r in results:
        lin_p, lin_u = r["pretrained"]["linear"], r["untrained"]["linear"]
        lin = (f"; linear {lin_p['last_top1']:.1f} % vs untrained {lin_u['last_top1']:.1f} %" if lin_p and lin_u else "")
        parts.append(f"{r['label']} kNN top-1 {r['pretrained']['knn']['top1']:.1f} % vs untrained "
                     f"{r['untrained']['knn']['top1']:.1f} %{lin}")
    print(f"unveil: demo finished in {total_s / 60:.1f} min: {'; '.join(parts)}; raw pixels kNN "
          f"{pixels['top1']:.1f} % (chance {100.0 / dataset.num_classes:g} %); report at {report}")
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.subset is not None:
        overrides.append(f"data.subset={args.subset}")
    return overrides


def _figures(out: Path, method: Any, dataset: Any, results: list[dict[str, Any]], pixels: dict[str, Any]) -> list[Path]:
    """Sample views (when the method makes them), kNN bars, kNN against epochs, the first run's curves."""
    from ..viz.curves import plot_curves, plot_views
    from ..viz.demo_figures import plot_knn_bars, plot_knn_vs_epoch

    sample = dataset.test.images[:10]
    figures = []
    if method.has_views:  # SimCLR's normalised views; the autoencoders' are in [0, 1]
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            views = [method.views(sample, g), method.views(sample, g)]
        info = method.data_info
        mean, std = (info.mean, info.std) if info is not None else ((0.0,) * 3, (1.0,) * 3)
        figures.append(plot_views(sample, views, out / "views.png", mean, std, normalized=info is not None))
    figures.append(plot_knn_bars(pixels["top1"], {r["label"]: {"untrained": r["untrained"]["knn"]["top1"],
                                                               "pretrained": r["pretrained"]["knn"]["top1"]}
                                                  for r in results},
                                 out / "knn_bars.png", chance=100.0 / dataset.num_classes))
    figures.append(plot_knn_vs_epoch({r["label"]: _curve(r) for r in results},
                                     {r["label"]: r["untrained"]["knn"]["top1"] for r in results},
                                     pixels["top1"], out / "knn_vs_epoch.png"))
    figures.append(plot_curves(results[0]["pretrained"]["run"], out / "curves.png"))
    return figures


def _report(out: Path, results: list[dict[str, Any]], pixels: dict[str, Any], dataset: Any, lin_epochs: int,
            total_s: float) -> str:
    """report.md: the verdict per method, the table beside both baselines, the runs, the figures."""
    knn = results[0]["pretrained"]["knn"]
    chance = 100.0 / dataset.num_classes
    rows = [f"| raw pixels (normalised, {pixels['feature_dim']}-d) | – | **{pixels['top1']:.1f}** | – |"]
    for r in results:
        for kind in ("untrained", "pretrained"):
            res = r[kind]
            lin = res["linear"]
            rows.append(f"| {r['label']}, {kind} encoder | `{Path(res['run']).name}` | **{res['knn']['top1']:.1f}** | "
                        f"{_pct(lin['last_top1'] if lin else None)} |")
    runs_lines = []
    for r in results:
        c = r["config"]
        t = c["train"]
        runs_lines.append(
            f"* `{r['recipe']}`: {r['label']}, backbone {c['backbone']['name']} (cifar_stem={c['backbone'].get('cifar_stem')}), "
            f"{t['epochs']} epochs of batch {t['batch_size']} on {len(dataset.train.images)} training images, "
            f"{t['optimizer']} lr {t['lr']}, precision {t['precision']}: pretraining took {r['pretrain_seconds'] / 60:.1f} min.")
    gap_lines = []
    for r in results:
        p, u = r["pretrained"]["knn"]["top1"], r["untrained"]["knn"]["top1"]
        best = max(u, pixels["top1"])
        verdict = "beats both baselines" if p > best else "does NOT beat the best baseline"
        gap_lines.append(f"* {r['label']}: pretrained {p:.1f} % vs untrained {u:.1f} % ({p - u:+.1f}) and raw pixels "
                         f"{pixels['top1']:.1f} % ({p - pixels['top1']:+.1f}): **{verdict}**.")
    return f"""# unveil demo: does pretraining beat its baselines?

{chr(10).join(gap_lines)}

Weighted kNN (k={knn['k']}, T={knn['temperature']}): bank = the {knn['train_images']} training images,
queries = the {knn['test_images']} test images, the same for every row (chance: {chance:g} %).
The untrained encoder is the same recipe with `train.epochs=0` (same seed, same initial weights).
Linear probe: {f'{lin_epochs} epochs of Adam 1e-3 on frozen, standardised features, last epoch' if lin_epochs > 0 else 'not run'}.

| features | run | kNN top-1 (%) | linear top-1 (%) |
|---|---|---:|---:|
{chr(10).join(rows)}

{chr(10).join(runs_lines)}
* everything (both encoders, evaluations, raw pixels, figures) took {total_s / 60:.1f} min.

![kNN: raw pixels, untrained, pretrained](knn_bars.png)

![kNN during pretraining vs the baselines](knn_vs_epoch.png)

![loss and monitor](curves.png)
{chr(10) + '![sample views](views.png)' + chr(10) if (out / 'views.png').exists() else ''}
Raw numbers: `demo.json` here, and `eval_knn.json` / `eval_linear.json` in each run directory.
"""
