"""``unveil export RUN -o backbone.safetensors``: the encoder's weights, no pickle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the encoder as safetensors")
    p.add_argument("run", help="run directory or .ckpt")
    p.add_argument("-o", "--output", help="output file (default RUN/backbone.safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_backbone
    from ..runs.checkpoint import load_run, resolve_run

    run_dir, _ = resolve_run(args.run)
    method, cfg, _ = load_run(args.run, load_data=False)
    out = Path(args.output) if args.output else run_dir / "backbone.safetensors"
    export_backbone(method.backbone, out, {**cfg, "backbone": method.backbone_spec or cfg["backbone"]},
                    eval_filter=method.eval_filter)
    print(f"unveil: exported {type(method.backbone).__name__} weights to {out}")
    timm_args = getattr(method.backbone, "timm_kwargs", None)
    if callable(timm_args):
        kw = timm_args()
        args_text = ", ".join(f"{k}={v!r}" for k, v in kw.items() if k != "model_name")
        print(f"unveil: a timm ViT: timm.create_model({kw['model_name']!r}, {args_text}).load_state_dict("
              f"safetensors.torch.load_file('{out}'), strict=True), or unveil.export.timm_model('{out}')")
    if method.eval_filter:
        print(f"unveil: this encoder was trained on filtered inputs ({json.dumps(method.eval_filter)}, recorded in the "
              f"file's metadata): apply unveil.export.input_filter('{out}') to normalised images before it")
    return 0
