"""CONTRIBUTING.md's examples run: its method trains one epoch through the engine, round-trips a checkpoint and
exports; its corruption behaves as the corruption rules say. Their registered names are made private here."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from unveil.cli import main
from unveil.corruptions import CORRUPTIONS, build_corruption
from unveil.errors import UserError
from unveil.methods import METHODS
from unveil.protocols.base import PROTOCOLS
from unveil.runs.checkpoint import load_checkpoint, load_run
from unveil.runs.logs import STEP_LOG, read_csv
from unveil.train import engine

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
NAME = "_contributing_rotation"
PROTOCOL = "_contributing_centroid"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _load(code: str, module_name: str) -> types.ModuleType:
    code = code.replace('@register("rotation"', f'@register("{NAME}"').replace(
        '@register_corruption("rotation")', f'@register_corruption("{NAME}")').replace(
        'NAME = "centroid"', f'NAME = "{PROTOCOL}"')
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module  # dataclasses look their module up
    exec(compile(code, f"{DOC}:{module_name}", "exec"), module.__dict__)
    return module


@pytest.fixture
def examples():
    method_code, corruption_code, protocol_code = _blocks()
    yield (_load(method_code, "contributing_method"), _load(corruption_code, "contributing_corruption"),
           _load(protocol_code, "contributing_protocol"))
    METHODS.remove(NAME)
    CORRUPTIONS.remove(NAME)
    PROTOCOLS.remove(PROTOCOL)
    for name in ("contributing_method", "contributing_corruption", "contributing_protocol"):
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_the_method_example_trains_round_trips_and_exports(examples, tiny_folder, tmp_path):
    from unveil.config import resolve

    cfg = resolve(None, [f"method.name={NAME}", f"data.name={tiny_folder}", "data.image_size=16", f"out={tmp_path / 'run'}",
                         "train.epochs=1", "train.batch_size=16", "train.progress=false", "train.monitor=knn",
                         "train.log_every_steps=1", "backbone.cifar_stem=false"])
    untrained = resolve(None, [f"method.name={NAME}", f"data.name={tiny_folder}", "data.image_size=16",
                               f"out={tmp_path / 'untrained'}", "train.epochs=0", "train.progress=false",
                               "train.monitor=none", "backbone.cifar_stem=false"])
    run = engine.train(cfg)
    before = load_checkpoint(engine.train(untrained) / "last.ckpt")["model"]
    state = load_checkpoint(run / "last.ckpt")
    losses = [float(r["loss"]) for r in read_csv(run / STEP_LOG)]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    key = "backbone.conv1.weight"
    assert not torch.equal(state["model"][key], before[key])  # gradients reached the backbone
    method, _, dataset = load_run(run)
    assert method.embed(dataset.test.images[:4]).shape == (4, 512)
    assert main(["export", str(run), "-o", str(tmp_path / "enc.safetensors")]) == 0
    from unveil.export import torchvision_model

    torchvision_model(tmp_path / "enc.safetensors")
    with pytest.raises(UserError, match=r"method.turns must be in \[2, 4\] for _contributing_rotation, got 5"):
        engine.train(resolve(None, [f"method.name={NAME}", "method.turns=5", f"data.name={tiny_folder}",
                                    "data.image_size=16", f"out={tmp_path / 'bad'}", "train.progress=false"]))


def test_the_corruption_example_is_pure_seeded_and_checked(examples):
    x = torch.rand(6, 3, 8, 8)
    corrupt = build_corruption(NAME, max_turns=3)
    a = corrupt(x, torch.Generator().manual_seed(0))
    b = corrupt(x, torch.Generator().manual_seed(0))
    assert torch.equal(a.images, b.images) and a.images.dtype == x.dtype and a.images.shape == x.shape
    assert 0 <= int(a.turns.min()) and int(a.turns.max()) <= 3
    undone = torch.stack([torch.rot90(img, -int(k), dims=(1, 2)) for img, k in zip(a.images, a.turns)])
    assert torch.equal(undone, x)
    with pytest.raises(UserError, match="max_turns must be 0 to 3"):
        build_corruption(NAME, max_turns=5)
    with pytest.raises(UserError, match="needs square images"):
        corrupt(torch.rand(2, 3, 8, 6), torch.Generator())


def test_the_protocol_example_scores_known_answers_and_is_generated_everywhere(examples, tiny_folder, tmp_path, capsys):
    """One file registers it: `unveil eval` has its verb, a suite may list it (its settings checked), the
    suite table and CSV have its column; its score is right on features whose answer is known."""
    from unveil.bench.spec import load_suite
    from unveil.bench.table import csv_columns, to_markdown
    from unveil.config import resolve

    centroid = examples[2]
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(25)
    centres = torch.eye(4, 16) * 10
    x = centres[y] + torch.randn(100, 16, generator=g)
    assert centroid.centroid_top1(x, y, x, y, 4) == 100.0  # separable: every image is nearest its own mean
    shuffled = centroid.centroid_top1(x, y[torch.randperm(100, generator=g)], x, y, 4)
    assert shuffled < 60.0  # labels unrelated to the features: near chance (25 %), not the 100 above

    run = engine.train(resolve(None, [f"data.name={tiny_folder}", "data.image_size=16", f"out={tmp_path / 'run'}",
                                      "train.epochs=0", "train.progress=false", "train.monitor=none",
                                      "backbone.cifar_stem=false", "train.precision=fp32"]))
    assert main(["eval", PROTOCOL, str(run)]) == 0
    assert "untrained encoder, same data and protocol" in capsys.readouterr().out
    saved = json.loads((run / f"eval_{PROTOCOL}.json").read_text())
    assert 0.0 <= saved["top1"] <= 100.0 and saved["untrained"]["top1"] == saved["top1"]  # epochs=0: same weights
    assert saved["settings"]["protocol"] == PROTOCOL and saved["settings"]["step"] == 0

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"entries:\n  - name: a\n    recipe: simclr_cifar10\n    evaluate: [{{{PROTOCOL}: {{}}}}]\n")
    assert "centroid" in to_markdown(load_suite(suite), "smoke", [], [], tmp_path)
    assert f"{PROTOCOL}_top1" in csv_columns()
    with pytest.raises(SystemExit):  # the verb takes no --k: argparse refuses it
        main(["eval", PROTOCOL, str(run), "--k", "3"])
