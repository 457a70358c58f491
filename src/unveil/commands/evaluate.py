"""``unveil eval <protocol> RUN``: one verb per registered protocol (knn, linear, finetune, and any file
added to ``unveil.protocols``), generated from the registry; prints and saves top-1/top-5.

``--eval-data DATA`` evaluates the run's encoder on other, labelled data (a folder of class
folders, a registered dataset name or a Parquet folder), decoded at the run's image size: the
way to evaluate a run trained on an unlabelled flat folder of photos."""

from __future__ import annotations

import argparse
import inspect
import json

from ..errors import UserError

EVAL_DATA_HELP = ("labelled data to evaluate on instead of the run's own (a folder of class folders, a registered "
                  "dataset name or a Parquet folder), decoded at the run's image size; needed for runs trained "
                  "on an unlabelled flat folder")


def register(sub: argparse._SubParsersAction) -> None:
    """One verb per registered protocol that has command-line options (``Protocol.add_arguments``)."""
    from ..protocols.base import ordered

    p = sub.add_parser("eval", help="evaluate a run (" + ", ".join(q.name for q in ordered() if q.add_arguments) + ")")
    kinds = p.add_subparsers(dest="protocol_verb", metavar="PROTOCOL", required=True)
    for protocol in ordered():
        if protocol.add_arguments is None:
            continue
        verb = kinds.add_parser(protocol.name, help=protocol.help, description=protocol.description or None)
        verb.add_argument("run", help="run directory or .ckpt")
        protocol.add_arguments(verb)
        if "device" in inspect.signature(protocol.evaluate).parameters:  # the fine-tune picks it as training does
            verb.add_argument("--device", default="auto")
        verb.add_argument("--eval-data", metavar="DATA", help=EVAL_DATA_HELP)
        verb.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                          help="also score the untrained encoder the run started from, same data and protocol")
        verb.set_defaults(func=run_protocol, protocol_name=protocol.name)


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


def run_protocol(args: argparse.Namespace) -> int:
    """The verb's options that are ``evaluate``'s parameters, checked in one line, then evaluated."""
    from ..protocols.base import PROTOCOLS

    protocol = PROTOCOLS.lookup(args.protocol_name)
    names = inspect.signature(protocol.evaluate).parameters
    given = {k: v for k, v in vars(args).items() if k in names and k != "run"}  # device: only where it runs
    protocol.check({k: v for k, v in given.items() if k not in protocol.not_settings})
    result = protocol.evaluate(args.run, **given)
    _print(result, _headline(args.run))
    return 0
