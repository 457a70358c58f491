"""``unveil eval {knn,linear,finetune} RUN``: evaluate a run; prints and saves top-1/top-5.

``--eval-data DATA`` evaluates the run's encoder on other, labelled data (a folder of class
folders, a registered dataset name or a Parquet folder), decoded at the run's image size: the
way to evaluate a run trained on an unlabelled flat folder of photos."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError, require

MAE_PROBE = ("--head-bn --optimizer lars --lr mae-budget --warmup-epochs 10 --init-std 0.01 --weight-decay 0 "
             "--epochs 90 --no-standardize")
EVAL_DATA_HELP = ("labelled data to evaluate on instead of the run's own (a folder of class folders, a registered "
                  "dataset name or a Parquet folder), decoded at the run's image size; needed for runs trained "
                  "on an unlabelled flat folder")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run (kNN, linear probe, fine-tune)")
    kinds = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    _add_knn(kinds)
    _add_linear(kinds)
    _add_finetune(kinds)


def _add_knn(kinds: argparse._SubParsersAction) -> None:
    knn = kinds.add_parser("knn", help="weighted kNN on frozen features")
    knn.add_argument("run", help="run directory or .ckpt")
    knn.add_argument("--k", type=int, default=200)
    knn.add_argument("--t", type=float, default=0.1, help="temperature")
    knn.add_argument("--features", choices=("backbone", "head"), default="backbone",
                     help="backbone: pooled encoder features (eval_knn.json); head: the projection head's output, "
                          "paper 5's monitor (eval_knn_head.json)")
    knn.add_argument("--device", default="auto")
    knn.add_argument("--eval-data", metavar="DATA", help=EVAL_DATA_HELP)
    knn.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                     help="also score the untrained encoder the run started from, same data and protocol")
    knn.set_defaults(func=run_knn)


def _add_linear(kinds: argparse._SubParsersAction) -> None:
    lin = kinds.add_parser("linear", help="linear probe on frozen, cached features",
                           description="Linear probe on frozen features. The RR protocol (the context-patch paper's): "
                           "--optimizer adam --lr 1e-3 --batch-size 128 --epochs 100 --no-standardize "
                           f"--schedule constant. MAE's linear probe: {MAE_PROBE}.")
    lin.add_argument("run")
    lin.add_argument("--epochs", type=int, default=100)
    lin.add_argument("--lr", type=_lr, default=1e-3,
                     help="absolute lr, or mae-budget (LARS: MAE's probe's lr summed over its steps, spread over "
                     "this probe's steps: 6.4 x 7038 / steps)")
    lin.add_argument("--batch-size", type=int, default=256)
    lin.add_argument("--optimizer", choices=("adam", "sgd", "lars"), default="adam")
    lin.add_argument("--weight-decay", type=float, default=0.0)
    lin.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                     help="standardise the features with the train statistics (default); the RR protocol does not")
    lin.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                     help="learning-rate schedule (RR protocol: constant)")
    lin.add_argument("--head-bn", action=argparse.BooleanOptionalAction, default=False,
                     help=f"BatchNorm1d without affine parameters before the linear head (MAE's linear probe: {MAE_PROBE})")
    lin.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warm-up (MAE's probe: 10)")
    lin.add_argument("--init-std", type=float, default=None,
                     help="the head's weight from a truncated normal of this std, zero bias (MAE's probe: 0.01; "
                     "default: PyTorch's initialisation)")
    lin.add_argument("--device", default="auto")
    lin.add_argument("--eval-data", metavar="DATA", help=EVAL_DATA_HELP)
    lin.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                     help="also score the untrained encoder the run started from, same data and protocol")
    lin.set_defaults(func=run_linear)


def _add_finetune(kinds: argparse._SubParsersAction) -> None:
    ft = kinds.add_parser("finetune", help="fine-tune the whole encoder with a linear head",
                          description="Fine-tune the encoder + a linear head. --protocol auto picks vit for a ViT "
                          "run (MAE's fine-tune: AdamW, lr 5e-4 per 256 images of the global batch, wd 0.05, layer "
                          "decay 0.65 (0.75 above 12 blocks), drop path 0.1, mixup 0.8, CutMix 1.0, label smoothing "
                          "0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, global average pooling with "
                          "fc_norm, min lr 1e-6, warm-up 5 epochs or 10 %% of them below 50) and convnet otherwise "
                          "(SGD 0.01, wd 1e-4, nothing else); every option given overrides the protocol's value.")
    ft.add_argument("run")
    ft.add_argument("--epochs", type=int, default=20)
    ft.add_argument("--protocol", choices=("auto", "convnet", "vit"), default="auto",
                    help="the preset for the options not given (auto: vit for a ViT run, else convnet)")
    ft.add_argument("--lr", type=float, default=None, help="absolute lr (default: the protocol's)")
    ft.add_argument("--batch-size", type=int, default=256)
    ft.add_argument("--optimizer", choices=("sgd", "adamw", "adam", "lars"), default=None)
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
    ft.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also fine-tune the untrained encoder the run started from, same data and settings")
    ft.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="random-resized crops + flips (and the protocol's RandAugment / random erasing) while "
                    "fine-tuning (default); --no-augment trains on the test view, as the overlay paper's fine-tune")
    ft.add_argument("--eval-data", metavar="DATA", help=EVAL_DATA_HELP)
    ft.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ft.set_defaults(func=run_finetune)


def _headline(run: str) -> tuple[str, str]:
    """(method name, the protocol its method declares as its headline; "" when none or unknown)."""
    from .. import methods
    from ..runs.checkpoint import read_config, resolve_run

    try:
        name = str(read_config(resolve_run(run)[0])["method"]["name"])
    except (OSError, KeyError, TypeError, UserError):  # a run without a readable config: no note
        return "", ""
    return name, methods.METHODS[name].headline_protocol if name in methods.METHODS else ""


def _print(result: dict, headline: tuple[str, str] = ("", "")) -> None:
    shown = {k: v for k, v in result.items() if k != "history"}
    print(json.dumps(shown, indent=2))
    base = result.get("untrained")
    if base is not None:  # the number beside its baseline, in one line
        trained = result.get("top1", result.get("last_top1"))
        untrained = base.get("top1", base.get("last_top1"))
        recal = result.get("untrained_bn_recalibrated")
        extra = (f"; untrained with BatchNorm statistics re-estimated on the data: {recal['top1']:.1f} %"
                 if recal is not None else "")
        print(f"unveil: {result['protocol']} top-1 {trained:.1f} % (untrained encoder, same data and protocol: "
              f"{untrained:.1f} %; {trained - untrained:+.1f} points{extra})")
    method, protocol = headline
    if protocol == "finetune" and result.get("protocol") in ("knn", "linear"):
        print(f"unveil: {method} is masked image modelling: its frozen features are not its headline (MAE ViT-B: 68.0 % "
              "linear vs 83.6 % fine-tuned); `unveil eval finetune RUN` is the protocol to compare")


def _positive(name: str, value: float) -> None:
    require(value > 0, f"--{name} must be > 0, got {value}")


def _lr(text: str) -> float | str:
    """A number, or the name of an lr rule (``mae-budget``)."""
    from ..eval.linear import LR_RULES

    if text in LR_RULES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or one of {', '.join(LR_RULES)}, got {text!r}") from None


def run_knn(args: argparse.Namespace) -> int:
    from ..protocols.core import evaluate_knn

    _positive("k", args.k)
    _positive("t", args.t)
    _print(evaluate_knn(args.run, k=args.k, temperature=args.t, device=args.device, eval_data=args.eval_data,
                        baseline=args.baseline, features=args.features), _headline(args.run))
    return 0


def run_linear(args: argparse.Namespace) -> int:
    from ..protocols.core import check_settings, evaluate_linear

    for name in ("epochs", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    options = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "standardize",
                                              "schedule", "head_bn", "warmup_epochs", "init_std")}
    check_settings("linear", options)
    _print(evaluate_linear(args.run, device=args.device, eval_data=args.eval_data, baseline=args.baseline,
                           **options), _headline(args.run))
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ..protocols.core import check_settings, evaluate_finetune

    for name in ("epochs", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if args.lr is not None:
        _positive("lr", args.lr)
    options = {k: getattr(args, k) for k in ("lr", "optimizer", "weight_decay", "protocol", "layer_decay",
                                              "drop_path", "mixup", "cutmix", "label_smoothing", "warmup_epochs",
                                              "min_lr", "rand_augment", "random_erasing", "global_pool")}
    check_settings("finetune", options)
    _print(evaluate_finetune(args.run, epochs=args.epochs, batch_size=args.batch_size, overrides=args.overrides,
                             augment=args.augment, eval_data=args.eval_data, baseline=args.baseline, **options))
    return 0
