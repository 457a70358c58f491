"""MAE learning parity (issue #17 item 3, the MAE part): unveil's MAE beside lightly's MAE on the same model,
data and held-out masks, after equal steps; the figure is the held-out reconstruction loss (a ViT on 2 CPU
cores is too slow for kNN to separate).

Model: ViT-Tiny with 4 px patches at 32 px (timm's ``VisionTransformer``, 12 blocks, 192 wide) and a
128-wide, 4-deep decoder with 4 heads (``mae_cifar10``'s), 75 % of the patches masked. Data: a stratified
CIFAR-10 training subset; held out: test images under the evaluation transform, masked with fixed noise
(the same masks for every model). Both libraries normalise with the same mean/std (the dataset's, as
unveil does), so their inputs and targets are the same tensors.

Contenders (each trains ``--epochs`` epochs of batch ``--batch-size``; warm-up 5 % of the steps, then
cosine per step, AdamW (0.9, 0.95), weight decay 0.05 off norms/biases/tokens):

* ``unveil``: ``unveil.train.engine.train`` on ``mae_cifar10`` (lr 1.5e-3 per 256, normalised-pixel
  loss), scale overridden only.
* ``lightly (unveil's settings)``: lightly 1.6's ``MaskedVisionTransformerTIMM`` +
  ``MaskedVisionTransformerDecoderTIMM`` + prediction head, assembled as lightly's MAE example and
  ImageNet benchmark (benchmarks/imagenet/vitb16/mae.py), ``MAETransform`` views, ``random_token_mask``,
  ``utils.get_weight_decay_parameters``, lightly's ``CosineWarmupScheduler``; lr and loss target as
  unveil's (per-patch normalised pixels via ``utils.normalize_mean_var``): the implementation control.
* ``lightly (documented)``: the same with lightly's documented recipe: lr 1.5e-4 per 256 (MAE's) and
  plain MSE on the raw (normalised-image) patches.

Reported per contender, before training (untrained) and after: the held-out loss on normalised-pixel
targets (``norm-pix``; for the raw-target model its per-patch-normalised prediction) and on raw patches.

    UNVEIL_CIFAR10=../shared/data/cifar10 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mae_parity.py \\
        --subset 4000 --epochs 10 --batch-size 128 --out benchmarks/results/mae-parity
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cpu_description  # noqa: E402

from unveil.build import build_method_for  # noqa: E402
from unveil.config import resolve  # noqa: E402
from unveil.data import load_data  # noqa: E402
from unveil.methods._mae import normalize_patches, patchify  # noqa: E402
from unveil.runs.checkpoint import load_checkpoint  # noqa: E402
from unveil.train.engine import train  # noqa: E402
from unveil.views import eval_transform  # noqa: E402

MASK_RATIO, PATCH, DECODER = 0.75, 4, (128, 4, 4)


def heldout_batch(data: Any, n: int, mean: tuple, std: tuple, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` test images under the evaluation transform and one fixed noise row per image (the masks)."""
    images = eval_transform(data.test.images[:n], data.image_size, mean, std)
    grid = (data.image_size // PATCH) ** 2
    noise = torch.rand(n, grid, generator=torch.Generator().manual_seed(seed + 1000))
    return images, noise


@torch.no_grad()
def unveil_heldout(method: nn.Module, images: Tensor, noise: Tensor) -> dict[str, float]:
    """unveil's model on the held-out images with the fixed masks (its own encoder/decoder path)."""
    method.eval()
    keep = int(noise.shape[1] * (1 - MASK_RATIO))
    ids_shuffle = noise.argsort(dim=1)
    ids_restore, ids_keep = ids_shuffle.argsort(dim=1), ids_shuffle[:, :keep]
    tokens = method.backbone.forward_tokens(images, ids_keep)
    pred = method.decoder(tokens, ids_restore)
    masked = torch.ones_like(noise, dtype=torch.bool).scatter(1, ids_keep, False)
    target = patchify(images, PATCH)
    p, t = pred[masked], target[masked]
    out = {"raw": float((p - t).pow(2).mean())}
    norm = p if method.norm_pix_loss else normalize_patches(p)
    out["norm_pix"] = float((norm - normalize_patches(t)).pow(2).mean())
    return out


def run_unveil(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.runs) / "unveil"
    steps_per_epoch = args.subset // args.batch_size
    overrides = [f"out={run_dir}", "data.name=cifar10", f"data.subset={args.subset}", f"train.epochs={args.epochs}",
                 f"train.batch_size={args.batch_size}", f"train.warmup_epochs={0.05 * args.epochs}",
                 "train.monitor=none", "train.progress=false", "train.log_every_steps=20", f"train.seed={args.seed}",
                 f"method.decoder_dim={DECODER[0]}", f"method.decoder_depth={DECODER[1]}",
                 f"method.decoder_heads={DECODER[2]}", "backbone.patch_size=4", "backbone.name=vit_tiny"]
    cfg = resolve("mae_cifar10", overrides)
    data = load_data("cifar10", subset=args.subset, split_seed=0)
    images, noise = heldout_batch(data, args.heldout, data.mean, data.std, args.seed)
    torch.manual_seed(cfg["train"]["seed"])  # the engine's seed before it builds the method: the untrained weights
    untrained = unveil_heldout(build_method_for(cfg, data), images, noise)
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    method = build_method_for(cfg, data)
    method.load_state_dict(load_checkpoint(run_dir / "last.ckpt")["model"])
    return {"untrained": untrained, "trained": unveil_heldout(method, images, noise), "wall_s": wall,
            "steps": steps_per_epoch * args.epochs, "lr_per_256": cfg["train"]["lr"], "target": "norm-pix",
            "precision": cfg["train"]["precision"], "overrides": overrides}


class LightlyMAE(nn.Module):
    """lightly's MAE example / benchmark module around a timm ViT-Tiny/4 at 32 px."""

    def __init__(self) -> None:
        import timm
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
        from lightly.models.modules.masked_vision_transformer_timm import init_weights

        super().__init__()
        vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=PATCH, num_classes=0)
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        dim, depth, heads = DECODER
        self.decoder_embed = nn.Linear(vit.embed_dim, dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=dim, depth=depth, num_heads=heads,
            num_prefix_tokens=vit.num_prefix_tokens, mlp_ratio=4.0, proj_drop_rate=0.0, attn_drop_rate=0.0)
        self.prediction_head = nn.Linear(dim, PATCH**2 * 3)
        self.decoder_embed.apply(init_weights)
        self.prediction_head.apply(init_weights)

    def forward(self, images: Tensor, idx_keep: Tensor, idx_mask: Tensor) -> tuple[Tensor, Tensor]:
        from lightly.models import utils

        x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x_decode = self.decoder_embed(x_encoded)
        x_masked = x_decode.new_zeros(images.shape[0], self.sequence_length, x_decode.shape[-1])
        x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
        x_pred = self.prediction_head(utils.get_at_index(self.decoder(x_masked, idx_mask=idx_mask), idx_mask))
        target = utils.get_at_index(utils.patchify(images, PATCH), idx_mask - 1)
        return x_pred, target


@torch.no_grad()
def lightly_heldout(model: LightlyMAE, images: Tensor, noise: Tensor, norm_pix: bool) -> dict[str, float]:
    """The held-out loss of lightly's model on the same images and masks (lightly's own random_token_mask
    with its ``torch.rand`` draw replaced by the fixed noise)."""
    from lightly.models import utils

    model.eval()
    b, n = noise.shape
    full = torch.cat([torch.zeros(b, 1), noise], dim=1)
    rand = torch.rand
    torch.rand = lambda *a, **k: full.clone()  # type: ignore[assignment]
    try:
        idx_keep, idx_mask = utils.random_token_mask(size=(b, n + 1), mask_ratio=MASK_RATIO)
    finally:
        torch.rand = rand  # type: ignore[assignment]
    pred, target = model(images, idx_keep, idx_mask)
    pred, target = pred.flatten(0, 1), target.flatten(0, 1)
    out = {"raw": float((pred - target).pow(2).mean())}
    norm = pred if norm_pix else normalize_patches(pred)
    out["norm_pix"] = float((norm - normalize_patches(target)).pow(2).mean())
    model.train()
    return out


def run_lightly(args: argparse.Namespace, lr_per_256: float, norm_pix: bool) -> dict[str, Any]:
    from lightly.models import utils
    from lightly.transforms import MAETransform
    from lightly.utils.scheduler import CosineWarmupScheduler


    data = load_data("cifar10", subset=args.subset, split_seed=0)
    images, noise = heldout_batch(data, args.heldout, data.mean, data.std, args.seed)
    torch.manual_seed(args.seed)
    model = LightlyMAE()
    untrained = lightly_heldout(model, images, noise, norm_pix)
    transform = MAETransform(input_size=32, normalize={"mean": list(data.mean), "std": list(data.std)})

    class PIL(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data.train.images)

        def __getitem__(self, i: int) -> Tensor:
            import torchvision

            return transform(torchvision.transforms.functional.to_pil_image(data.train.images[i]))[0]

    loader = torch.utils.data.DataLoader(PIL(), batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=0, generator=torch.Generator().manual_seed(args.seed))
    params, no_wd = utils.get_weight_decay_parameters([model.backbone, model.decoder_embed, model.decoder,
                                                        model.prediction_head])
    lr = lr_per_256 * args.batch_size / 256
    optim = torch.optim.AdamW([{"params": params}, {"params": no_wd, "weight_decay": 0.0}], lr=lr,
                              weight_decay=0.05, betas=(0.9, 0.95))
    total = len(loader) * args.epochs
    sched = CosineWarmupScheduler(optim, warmup_epochs=0.05 * total, max_epochs=total)
    start = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for x in loader:
            idx_keep, idx_mask = utils.random_token_mask(size=(x.shape[0], model.sequence_length),
                                                         mask_ratio=MASK_RATIO)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.lightly_bf16):
                pred, target = model(x, idx_keep, idx_mask)
            if norm_pix:
                target = utils.normalize_mean_var(target, dim=-1)
            loss = nn.functional.mse_loss(pred.float(), target.float())
            loss.backward()
            optim.step()
            optim.zero_grad()
            sched.step()
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"lightly MAE: loss {float(loss.detach())}")
    return {"untrained": untrained, "trained": lightly_heldout(model, images, noise, norm_pix),
            "wall_s": time.perf_counter() - start, "steps": total, "lr_per_256": lr_per_256,
            "target": "norm-pix" if norm_pix else "raw", "precision": "bf16" if args.lightly_bf16 else "fp32"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--heldout", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lightly-bf16", action="store_true", help="bf16 autocast for lightly too (unveil: auto)")
    p.add_argument("--out", default="benchmarks/results/mae-parity")
    p.add_argument("--runs", default="runs/mae-parity")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    contenders = [("unveil", lambda: run_unveil(args)),
                  ("lightly (unveil's settings)", lambda: run_lightly(args, 1.5e-3, True)),
                  ("lightly (documented)", lambda: run_lightly(args, 1.5e-4, False))]
    results = {}
    path = out / "mae_parity.json"
    if path.is_file():
        results = json.loads(path.read_text())["results"]
    for name, fn in contenders:
        if name in results:
            print(f"{name}: kept", flush=True)
            continue
        print(f"--- {name}", flush=True)
        results[name] = fn()
        print(json.dumps(results[name]), flush=True)
        path.write_text(json.dumps({"results": results, "args": vars(args), "cpu": cpu_description(),
                                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2))
    lines = [f"MAE learning parity: ViT-Tiny/4, decoder {DECODER[0]}x{DECODER[1]}, {args.subset} CIFAR-10 images, "
             f"{args.epochs} epochs of batch {args.batch_size}, held-out loss on {args.heldout} test images with "
             f"fixed masks; {cpu_description()}\n",
             "| contender | lr per 256 | target | steps | held-out norm-pix loss: untrained -> trained | "
             "raw-patch loss: untrained -> trained | wall min |", "|---|---:|---|---:|---|---|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['lr_per_256']:g} | {r['target']} | {r['steps']} | "
                     f"{r['untrained']['norm_pix']:.3f} -> **{r['trained']['norm_pix']:.3f}** | "
                     f"{r['untrained']['raw']:.3f} -> {r['trained']['raw']:.3f} | {r['wall_s'] / 60:.1f} |")
    (out / "mae_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
