"""MAE training steps (issue #10 item 9), unveil vs lightly 1.6 on the same timm ViT, interleaved in
short rounds as ``bench_siamese.py`` (order rotating per round; each ratio taken inside a round,
then the median and min–max over rounds).

Two configurations, each at fp32 and bf16 autocast, on **pre-made views** (one batch of MAE crops
drawn once by unveil's view pipeline from real CIFAR-10 images; only the step is timed):

* ``tiny32``: ViT-Tiny (192 wide, 12 blocks, 3 heads), 4 px patches at 32 px (64 tokens), decoder
  128 wide x 4 deep, 4 heads (``mae_cifar10`` as shipped); batch 128 by default.
* ``small224``: ViT-Small (384 wide, 12 blocks, 6 heads), 16 px patches at 224 px (196 tokens),
  decoder 256 wide x 4 deep, 8 heads (MAE's 512-wide decoder on the 768-wide ViT-B, halved with the
  encoder as ``mae_cifar10`` does; 4 deep as the recipe); CIFAR-10 images upscaled to 224 px
  (``data.image_size=224``); batch 32 by default.

Contenders, mask ratio 0.75 both (16 of 64 / 49 of 196 patches kept, per sample):

* ``unveil``: the engine's own step (``engine.prepare`` builds the run from ``mae_cifar10`` + the
  overrides above, each step ``engine.train_step`` as ``engine._loop``: lr, zero_grad, autocast,
  masking, encoder on the visible patches, decoder, norm-pix loss, backward, AdamW (0.9, 0.95),
  wd 0.05 on weights only), with the method's view pipeline replaced by the pre-made views.
* ``lightly``: lightly's MAE example (``examples/pytorch/mae.py``): ``MaskedVisionTransformerTIMM``
  on ``timm.create_model(**unveil_backbone.timm_kwargs())`` (same ViT), ``MAEDecoderTIMM`` of the
  same width/depth/heads, ``utils.random_token_mask``, ``set_at_index`` / ``get_at_index``, the
  prediction head on the masked tokens only, ``nn.MSELoss`` on raw pixels (its example has no
  norm-pix) and ``torch.optim.AdamW(model.parameters())`` with betas (0.9, 0.95), wd 0.05 on all.

    .venv/bin/python benchmarks/bench_mae.py --configs tiny32 --threads 1 --rounds 5 --steps 1 \\
        --json benchmarks/results/2026-11-30-bench_mae-tiny32.json
    .venv/bin/python benchmarks/bench_mae.py --configs small224 --threads 1 --rounds 4 --steps 1 \\
        --json benchmarks/results/2026-11-30-bench_mae-small224.json

One torch thread on a shared box: with 2 threads beside other jobs (load average 5 on 2 cores) the
same steps ran ~4x slower and single-round ratios spread 0.34-1.85 (2026-11-30, 2-core AMD EPYC).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_siamese import interleave, lscpu_model, make_engine, tables  # noqa: E402
from bench_train import Contender, _autocast, cpu_description  # noqa: E402

from unveil.build import build_method_for  # noqa: E402
from unveil.config import resolve  # noqa: E402
from unveil.data import load_data  # noqa: E402

CONFIGS = {  # name: (image size, backbone, decoder dim, depth, heads, default batch)
    "tiny32": (32, "vit_tiny", 128, 4, 4, 128),
    "small224": (224, "vit_small", 256, 4, 8, 32),
}
ADAMW = {"lr": 1.5e-4, "betas": (0.9, 0.95), "weight_decay": 0.05}


def _cfg(config: str, batch: int, precision: str, tmp: Path) -> dict:
    size, backbone, dim, depth, heads, _ = CONFIGS[config]
    return resolve("mae_cifar10", [
        f"backbone.name={backbone}", f"data.image_size={size}", f"method.decoder_dim={dim}",
        f"method.decoder_depth={depth}", f"method.decoder_heads={heads}", "method.mask_ratio=0.75",
        f"train.batch_size={batch}", f"data.subset={max(256, batch)}", "data.test_subset=64",
        f"train.precision={precision}", "train.device=cpu", "train.monitor=none", "train.progress=false",
        f"out={tmp / f'{config}-{precision}'}"])


class LightlyMAE(nn.Module):
    """lightly's MAE example (examples/pytorch/mae.py) with the decoder sizes as arguments."""

    def __init__(self, vit: nn.Module, dim: int, depth: int, heads: int, mask_ratio: float = 0.75):
        super().__init__()
        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

        self.mask_ratio = mask_ratio
        self.patch_size = vit.patch_embed.patch_size[0]
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        with warnings.catch_warnings():  # deprecated for 1.7 in favour of the decoder without embed/predict
            warnings.simplefilter("ignore")
            self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=self.patch_size,
                                          embed_dim=vit.embed_dim, decoder_embed_dim=dim, decoder_depth=depth,
                                          decoder_num_heads=heads, mlp_ratio=4.0, proj_drop_rate=0.0,
                                          attn_drop_rate=0.0)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        from lightly.models import utils

        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(size=(b, self.sequence_length), mask_ratio=self.mask_ratio,
                                                     device=images.device)
        x_encoded = self.backbone.encode(images=images, idx_keep=idx_keep)
        x_decode = self.decoder.embed(x_encoded)
        x_masked = utils.repeat_token(self.decoder.mask_token, (b, self.sequence_length))
        x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
        x_pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(x_masked), idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
        return x_pred, target


def make_lightly(config: str, backbone: nn.Module, precision: str, batch: int, x: Tensor) -> tuple[Contender, nn.Module]:
    import timm

    _, _, dim, depth, heads, _ = CONFIGS[config]
    model = LightlyMAE(timm.create_model(**backbone.timm_kwargs()), dim, depth, heads)
    criterion = nn.MSELoss()
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)
    model.train()

    def step() -> None:
        with _autocast(precision):
            pred, target = model(x)
            loss = criterion(pred.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return Contender(f"lightly {config} {precision}", batch, step), model


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per contender per round")
    p.add_argument("--batch-size", type=int, nargs="+", help="per config, in --configs order (default 128 32)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", help="also write every round's raw figures here")
    p.add_argument("--md", help="also write the printed report here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batch_size or [CONFIGS[c][5] for c in args.configs]
    if len(batches) != len(args.configs):
        p.error("--batch-size needs one value per config")
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    import lightly
    import timm

    versions = f"torch {torch.__version__}, timm {timm.__version__}, lightly {lightly.__version__}"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    log(f"# lscpu: {lscpu_model()}; {cpu_description()}\n# {versions}; HEAD {head}; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"load average at start {os.getloadavg()}; {args.rounds} rounds x {args.steps} steps per contender, "
        f"order rotating per round\n")
    raw: dict = {"cpu": lscpu_model(), "cpu_description": cpu_description(), "versions": versions, "head": head,
                 "args": vars(args), "blocks": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_mae-"))
    try:
        for config, batch in zip(args.configs, batches):
            size = CONFIGS[config][0]
            dataset = load_data("cifar10", image_size=size, subset=max(256, batch), test_subset=64)
            contenders, pairs, params = [], [], {}
            for precision in args.precisions:
                cfg = _cfg(config, batch, precision, tmp)
                method = build_method_for(cfg, dataset)
                with torch.no_grad():
                    x = method.views(dataset.train.images[:batch], torch.Generator().manual_seed(0))
                c = make_engine(f"unveil {config} {precision}", cfg, [x])
                assert c.precision == precision, (c.precision, precision)  # type: ignore[attr-defined]
                lc, lmodel = make_lightly(config, method.backbone, precision, batch, x)
                contenders += [c, lc]
                pairs.append((c.name, lc.name))
                params = {"unveil encoder": trainable(method.backbone), "unveil decoder": trainable(method.decoder),
                          "lightly encoder": trainable(lmodel.backbone), "lightly decoder": trainable(lmodel.decoder)}
            log(f"{config}: trainable parameters {params}")
            rounds, loads = interleave(contenders, args.rounds, args.steps, log)
            _, bb, dim, depth, heads, _ = CONFIGS[config]
            tables(f"MAE steps on pre-made views, {bb} p{size // method.backbone.grid} at {size} px, decoder {dim} wide "
                   f"x {depth} deep ({heads} heads), mask 0.75, AdamW, batch {batch}", contenders, rounds, loads, pairs,
                   log)
            raw["blocks"].append({"config": config, "batch": batch, "params": params, "rounds": rounds, "load": loads})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    if args.md:
        Path(args.md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
