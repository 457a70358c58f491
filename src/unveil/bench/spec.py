"""Suites are data: a YAML file of entries (recipe + overrides + evaluations + the paper's numbers).

Layout of ``recipes/suites/<suite>.yaml``::

    title: ...                      # one line for the table's heading
    paper: ...                      # citation
    caveats: [...]                  # printed above the table (data copies, missing datasets)
    overrides: [...]                # dotted overrides for every entry at every scale
    scales: {smoke: [...], cpu: [...], gpu: [...]}   # per-scale overrides for every entry
    fallback_data: {cifar100: cifar10}               # used when the first is not found locally
    paper_data: CIFAR-100           # the paper's dataset: rows on other data say so
    entries:
      - name: overlay-a0.3          # also the run directory's name
        recipe: overlay_cifar10
        overrides: [method.alpha=0.3]
        scales: {smoke: [...]}      # optional per-entry, per-scale overrides
      - name: supervised-scratch    # trained *as* the fine-tune protocol, from random weights:
        train_as: {finetune: {epochs: 20, lr: 0.01}}   # -> train.epochs/lr/batch_size/optimizer/
                                    # weight_decay (and augment -> method.augment), after
                                    # eval.finetune.* overrides of the scale/caller
        evaluate: [{finetune: {epochs: 20, lr: 0.01}}, {linear: {epochs: 5}}, {knn: {}},
                   {knn: {features: head}}]  # kNN on the head embedding too: its own result, knn_head
        paper: {finetune: 38.1, linear: 7.6}
        paper_setting: Caltech-256, ResNet-50 AE, 224 px

Overrides apply in this order: recipe, suite ``overrides``, suite ``scales[scale]``, entry
``overrides``, entry ``scales[scale]``, then the caller's. Items named ``eval.<protocol>.<key>=v``
set evaluation settings instead of training ones (e.g. ``eval.linear.epochs=2`` at smoke scale);
they only touch entries that run that protocol.

An entry's evaluations are keyed by *slot*: the protocol's name, except kNN on the head embedding
(``knn`` with ``features: head``), whose slot is ``knn_head``; a slot names the saved result
(``eval_<slot>.json``) and the table's columns, so both kNN readings stand side by side.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import load_yaml, merge, parse_overrides, recipes_dir, resolve, validate
from ..errors import UserError, require
from ..protocols.base import PROTOCOLS, slot_protocol

SCALES = ("smoke", "cpu", "gpu")
__all__ = ["PROTOCOLS", "SCALES", "Entry", "Planned", "Suite", "eval_slot", "load_suite", "plan_suite", "pretrain_state",
           "slot_protocol"]


def eval_slot(kind: str, settings: dict[str, Any]) -> str:
    """Where an evaluation's result goes (``eval_<slot>.json``): the protocol's ``slot`` for these settings
    (``knn_head`` for kNN on the head embedding), else the protocol's own name."""
    return PROTOCOLS.lookup(kind).slot(settings)


@dataclass
class Entry:
    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    evaluate: dict[str, dict[str, Any]] = field(default_factory=dict)  # slot -> settings (eval_slot)
    paper: dict[str, float] = field(default_factory=dict)
    paper_setting: str = ""
    scales: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""
    train_as: dict[str, Any] = field(default_factory=dict)  # {"finetune": settings}


@dataclass
class Suite:
    name: str
    title: str
    entries: list[Entry]
    paper: str = ""
    caveats: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    scales: dict[str, list[str]] = field(default_factory=dict)
    fallback_data: dict[str, str] = field(default_factory=dict)
    paper_data: str = ""

    def entry_names(self) -> list[str]:
        return [e.name for e in self.entries]


@dataclass
class Planned:
    """One entry, resolved for a scale: the training config and each evaluation's settings."""

    entry: Entry
    cfg: dict[str, Any]
    evals: dict[str, dict[str, Any]]
    run_dir: Path
    notes: list[str]
    paper_data: str = ""  # the paper's dataset, when the rows' data differs from it


def suites_dir() -> Path:
    return recipes_dir() / "suites"


def available_suites() -> list[str]:
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


def _str_list(value: Any, where: str) -> list[str]:
    require(isinstance(value, list) and all(isinstance(v, str) for v in value),
            f"{where} must be a list of dotted overrides such as train.epochs=5, got {value!r}")
    return list(value)


def _scales(value: Any, where: str) -> dict[str, list[str]]:
    require(isinstance(value, dict), f"{where} must map a scale ({', '.join(SCALES)}) to a list of overrides")
    for key in value:
        require(key in SCALES, f"{where}: unknown scale '{key}'; scales are {', '.join(SCALES)}")
    return {k: _str_list(v or [], f"{where}.{k}") for k, v in value.items()}


def _entry(raw: Any, where: str) -> Entry:
    require(isinstance(raw, dict) and "name" in raw and "recipe" in raw, f"{where} needs at least name and recipe")
    known = {"name", "recipe", "overrides", "evaluate", "paper", "paper_setting", "scales", "note", "train_as"}
    extra = sorted(set(raw) - known)
    require(not extra, f"{where}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
    name = str(raw["name"])
    require(name.replace("-", "").replace("_", "").replace(".", "").isalnum(),
            f"{where}: entry name '{name}' must use letters, digits, '-', '_' or '.' (it names a folder)")
    evaluate: dict[str, dict[str, Any]] = {}
    for item in raw.get("evaluate") or []:
        item = {item: {}} if isinstance(item, str) else item
        require(isinstance(item, dict) and len(item) == 1,
                f"{where}.evaluate: each item is one protocol with its settings, e.g. {{linear: {{epochs: 5}}}}")
        (kind, settings), = item.items()
        require(kind in PROTOCOLS, f"{where}.evaluate: unknown protocol '{kind}'; known: {', '.join(PROTOCOLS)}")
        require(settings is None or isinstance(settings, dict),
                f"{where}.evaluate: the settings of {kind} must be a mapping, e.g. {{k: 200}}, got {settings!r}")
        slot = eval_slot(kind, settings or {})
        require(slot not in evaluate, f"{where}.evaluate lists {slot} twice: one item per protocol (kNN on the head "
                "embedding, features: head, is one more)")
        evaluate[slot] = dict(settings or {})
    train_as = raw.get("train_as") or {}
    require(isinstance(train_as, dict) and set(train_as) <= {"finetune"},
            f"{where}.train_as must be {{finetune: {{epochs: ..., lr: ...}}}} (train with the fine-tune settings)")
    paper = raw.get("paper") or {}
    require(isinstance(paper, dict) and all(isinstance(v, (int, float)) for v in paper.values()),
            f"{where}.paper must map a protocol to the paper's top-1 %, e.g. {{finetune: 38.1}}")
    with_paper = [p.name for p in PROTOCOLS.values() if p.paper_label]
    require(set(paper) <= set(with_paper), f"{where}.paper: unknown protocol(s) {', '.join(sorted(set(paper) - set(with_paper)))}; "
            f"the paper's numbers go under {', '.join(with_paper)}")
    return Entry(name=name, recipe=str(raw["recipe"]), overrides=_str_list(raw.get("overrides") or [], f"{where}.overrides"),
                 evaluate=evaluate, paper={k: float(v) for k, v in paper.items()},
                 paper_setting=str(raw.get("paper_setting", "")), scales=_scales(raw.get("scales") or {}, f"{where}.scales"),
                 note=str(raw.get("note", "")), train_as={k: dict(v or {}) for k, v in train_as.items()})


def load_suite(suite: str | Path) -> Suite:
    """A shipped suite by name (``overlay``) or a YAML path."""
    path = Path(suite)
    if not path.suffix:
        path = suites_dir() / f"{suite}.yaml"
    if not path.is_file():
        raise UserError(f"unknown suite '{suite}': choose one of {', '.join(available_suites())} or give a YAML path")
    try:
        raw = load_yaml(path.read_text()) or {}  # the recipes' loader: 1e-3 is a float, as in a recipe
    except yaml.YAMLError as exc:
        raise UserError(f"suite {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    require(isinstance(raw, dict) and isinstance(raw.get("entries"), list) and raw["entries"],
            f"suite {path} needs a non-empty 'entries' list")
    entries = [_entry(e, f"{path.name}: entries[{i}]") for i, e in enumerate(raw["entries"])]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    require(not dupes, f"suite {path}: entry names must be unique, repeated: {', '.join(dupes)}")
    return Suite(name=path.stem, title=str(raw.get("title", path.stem)), entries=entries, paper=str(raw.get("paper", "")),
                 caveats=[str(c) for c in raw.get("caveats") or []],
                 overrides=_str_list(raw.get("overrides") or [], f"{path.name}: overrides"),
                 scales=_scales(raw.get("scales") or {}, f"{path.name}: scales"),
                 fallback_data={str(k): str(v) for k, v in (raw.get("fallback_data") or {}).items()},
                 paper_data=str(raw.get("paper_data", "")))


def split_overrides(items: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Training overrides, and ``eval.<protocol>.<key>=value`` items as {protocol: {key: value}}."""
    train = [i for i in items if not i.startswith("eval.")]
    evals = parse_overrides([i for i in items if i.startswith("eval.")]).get("eval", {}) if len(train) < len(items) else {}
    for kind, settings in evals.items():
        require(kind in PROTOCOLS and isinstance(settings, dict),
                f"override eval.{kind}...: the protocol must be one of {', '.join(PROTOCOLS)} (e.g. eval.linear.epochs=5)")
    return train, evals


def data_present(name: str, root: str | None) -> bool:
    """Whether a dataset is found locally (never downloads)."""
    from ..data.load import resolve_source

    try:
        resolve_source(name, root, download=False)
        return True
    except UserError:
        return False


def pretrain_state(run_dir: Path) -> str:
    """'done', 'partial' (a checkpoint to continue from) or 'new'."""
    from ..runs.checkpoint import CKPT_NAME
    from ..runs.logs import SUMMARY

    if (run_dir / CKPT_NAME).is_file():
        return "done" if (run_dir / SUMMARY).is_file() else "partial"
    return "new"


def check_protocol_settings(kind: str, settings: dict[str, Any], where: str) -> None:
    """Misspelt or unknown settings fail at planning time, naming the entry."""
    from ..protocols.base import check_settings

    try:
        check_settings(kind, settings)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def check_only(suite: Suite, only: list[str] | None) -> None:
    unknown = [n for n in only or [] if n not in suite.entry_names()]
    require(not unknown, f"--only: no entry {', '.join(unknown)} in suite {suite.name}; "
            f"entries are {', '.join(suite.entry_names())}")


def plan_suite(suite: Suite, scale: str, out_dir: str | Path, overrides: list[str] | None = None,
               only: list[str] | None = None) -> list[Planned]:
    """Resolve and validate every selected entry up front, so a typo fails before hours of training."""
    require(scale in SCALES, f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    check_only(suite, only)
    planned = []
    for entry in suite.entries:
        if only and entry.name not in only:
            continue
        where = f"suite {suite.name}, entry {entry.name}"
        items = (suite.overrides + suite.scales.get(scale, []) + entry.overrides + entry.scales.get(scale, [])
                 + list(overrides or []))
        train_items, eval_items = split_overrides(items)
        try:
            cfg = resolve(entry.recipe, train_items)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        if entry.train_as:  # e.g. supervised from scratch = the fine-tune protocol from random weights
            settings = {**entry.train_as["finetune"], **eval_items.get("finetune", {})}
            check_protocol_settings("finetune", settings, f"{where}, train_as")
            keys = ("epochs", "lr", "batch_size", "optimizer", "weight_decay")
            cfg = merge(cfg, {"train": {k: settings[k] for k in keys if k in settings}})
            if "augment" in settings:  # the fine-tune's augmentation switch is the supervised method's
                require(cfg["method"]["name"] == "supervised",
                        f"{where}: train_as with augment needs the supervised method, not {cfg['method']['name']}")
                cfg = merge(cfg, {"method": {"augment": bool(settings["augment"])}})
            validate(cfg)
        run_dir = Path(out_dir) / entry.name
        cfg["out"] = str(run_dir)
        notes = [entry.note] if entry.note else []
        wanted = str(cfg["data"]["name"])
        if wanted in suite.fallback_data and not data_present(wanted, cfg["data"]["root"]):
            cfg = merge(cfg, {"data": {"name": suite.fallback_data[wanted]}})
            validate(cfg)
            notes.append(f"{wanted} not found locally: ran on {suite.fallback_data[wanted]} instead")
        evals = {}
        for slot, settings in entry.evaluate.items():
            kind = slot_protocol(slot)
            evals[slot] = {**copy.deepcopy(settings), **eval_items.get(kind, {})}
            require(eval_slot(kind, evals[slot]) == slot,
                    f"{where}: eval.{kind}.features would turn its {slot} evaluation into another one; list kNN on "
                    "the head embedding as its own item ({knn: {features: head}}) instead")
            check_protocol_settings(kind, evals[slot], where)
        planned.append(Planned(entry=entry, cfg=cfg, evals=evals, run_dir=run_dir, notes=notes,
                               paper_data=suite.paper_data))
    return planned
