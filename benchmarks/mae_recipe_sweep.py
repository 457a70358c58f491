"""MAE recipe against MAE (issue #17 item 1d): held-out reconstruction loss after equal steps, and the
cost per step, for the base lr (1.5e-4 vs 1.5e-3 per 256) and the decoder (512 x 8 vs 128 x 4 and
between), on the same CIFAR-10 subset, seed and masks.

Each configuration is ``mae_cifar10`` (ViT-Tiny, 4 px patches at 32 px, mask 0.75, AdamW (0.9, 0.95),
wd 0.05, warm-up + cosine) trained by the engine for ``--steps`` steps of ``--batch-size`` from the
same seed (same initial encoder, same batch order and masks: the engine's generator); then the
norm-pix MSE on the masked patches of ``--test`` held-out test images (evaluation view, masks from one
fixed generator, identical for every configuration). Configurations run one after another.

    UNVEIL_CIFAR10=/work/shared/data/cifar10 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mae_recipe_sweep.py \\
        --json /tmp/mae_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from unveil.build import build_method_for
from unveil.config import resolve
from unveil.data import load_data
from unveil.methods._mae import masked_patch_loss, patchify
from unveil.runs.checkpoint import CKPT_NAME, load_checkpoint
from unveil.runs.logs import STEP_LOG, read_csv
from unveil.train import engine

# name: (lr per 256, decoder dim, depth, heads)
CONFIGS = {
    "dec128x4-lr1.5e-3": (1.5e-3, 128, 4, 4),
    "dec128x4-lr1.5e-4": (1.5e-4, 128, 4, 4),
    "dec512x8-lr1.5e-4": (1.5e-4, 512, 8, 16),
    "dec512x8-lr1.5e-3": (1.5e-3, 512, 8, 16),
    "dec256x4-lr1.5e-3": (1.5e-3, 256, 4, 8),
}


@torch.no_grad()
def heldout_loss(method: torch.nn.Module, images: torch.Tensor, seed: int, chunk: int = 128) -> float:
    """Norm-pix MSE on the masked patches of ``images`` (evaluation view), masks from ``seed``."""
    method.eval()
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for part in images.split(chunk):
        x = method._eval_input(part)
        _, pred, mask = method.encode_decode(x, g)
        total += float(masked_patch_loss(pred, patchify(x, method.backbone.patch), mask, True)) * len(part)
        count += len(part)
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--subset", type=int, default=4000)
    p.add_argument("--test", type=int, default=256)
    p.add_argument("--warmup-steps", type=int, default=8)
    p.add_argument("--json", help="write the table here as JSON")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    test = load_data("cifar10", image_size=32, subset=args.subset, test_subset=args.test).test.images
    rows = []
    out = Path(tempfile.mkdtemp(prefix="mae_sweep-"))
    for name in args.configs:
        lr, dim, depth, heads = CONFIGS[name]
        steps_per_epoch = args.subset // args.batch_size
        cfg = resolve("mae_cifar10", [
            f"method.decoder_dim={dim}", f"method.decoder_depth={depth}", f"method.decoder_heads={heads}",
            f"train.lr={lr}", f"train.batch_size={args.batch_size}", f"data.subset={args.subset}",
            f"data.test_subset={args.test}", f"train.max_steps={args.steps}",
            f"train.epochs={-(-args.steps // steps_per_epoch)}",
            f"train.warmup_epochs={args.warmup_steps / steps_per_epoch}", "train.monitor=none",
            "train.progress=false", "train.device=cpu", f"out={out / name}"])
        t0 = time.perf_counter()
        run_dir = engine.train(cfg)
        wall = time.perf_counter() - t0
        state = load_checkpoint(Path(run_dir) / CKPT_NAME)
        method = build_method_for(state["config"], dataset_info=state.get("data_info"))
        method.load_state_dict(state["model"])
        log = read_csv(Path(run_dir) / STEP_LOG)
        row = {"config": name, "lr_per_256": lr, "abs_lr": lr * args.batch_size / 256, "decoder": f"{dim}x{depth}",
               "heads": heads, "decoder_params": sum(q.numel() for q in method.decoder.parameters()),
               "steps": int(state["step"]), "train_wall_s": round(wall, 1), "s_per_step": round(wall / args.steps, 2),
               "last_train_loss": log[-1].get("loss") if log else None,
               "heldout_loss": round(heldout_loss(method, test, seed=1234), 4),
               "load_avg": os.getloadavg()}
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
