"""Low-shot evaluation (``--labels``): the linear probe and the fine-tune train on a stratified, seeded share of
the training labels, score on the whole test split, record the share, and stand beside the full result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unveil.cli import main
from unveil.config import resolve
from unveil.data.labels import pick_labelled
from unveil.protocols.base import current_settings
from unveil.protocols.linear import evaluate_linear
from unveil.runs.checkpoint import load_checkpoint, read_config
from unveil.train import engine


@pytest.fixture
def run(tiny_folder, tmp_path, monkeypatch):
    """The untrained encoder as a run (train.epochs=0) on the 2-class tiny folder: 77 train / 19 test images."""
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    return engine.train(resolve(None, [f"data.name={tiny_folder}", "data.image_size=16", f"out={tmp_path / 'run'}",
                                       "train.epochs=0", "train.progress=false", "train.monitor=none",
                                       "backbone.cifar_stem=false", "train.precision=fp32"]))


def test_linear_on_a_share_of_the_labels_trains_on_that_share_and_keeps_the_full_probe(run, capsys):
    full = evaluate_linear(run, epochs=2, baseline=True)
    low = evaluate_linear(run, epochs=2, baseline=True, labels="10%", labels_seed=3)
    assert full["train_labels"] == 77 and full["labels"] == "all"
    assert low["train_labels"] == 8 and low["labels"] == "10%"  # round(0.1 x ~38) per class: 4 + 4
    assert low["settings"]["labels"] == "10%" and low["settings"]["labels_seed"] == 3
    assert "labels" not in full["settings"]  # a full probe records what it always recorded
    assert json.loads((run / "eval_linear.json").read_text())["train_labels"] == 77  # not overwritten
    assert json.loads((run / "eval_linear_10pct.json").read_text())["train_labels"] == 8
    assert current_settings("linear", run, epochs=2, labels="10%", labels_seed=3) == low["settings"]
    assert current_settings("linear", run, epochs=2, labels="10%", labels_seed=4) != low["settings"]

    assert main(["eval", "linear", str(run), "--epochs", "1", "--labels", "5"]) == 0
    saved = json.loads((run / "eval_linear_5perclass.json").read_text())
    assert saved["train_labels"] == 10 and "untrained" in saved
    assert main(["eval", "linear", str(run), "--labels", "0%"]) != 0
    assert "labels must be a share" in capsys.readouterr().err


def test_the_share_is_the_same_images_for_the_trained_and_the_untrained_encoder():
    labels = np.array([0] * 40 + [1] * 37)
    assert np.array_equal(pick_labelled(labels, "10%", 3), pick_labelled(labels.copy(), "10%", 3))


@pytest.mark.slow
def test_finetune_on_a_share_of_the_labels_trains_in_its_own_folder(run):
    assert main(["eval", "finetune", str(run), "--epochs", "1", "--batch-size", "8", "--labels", "10%",
                 "--no-baseline"]) == 0
    result = json.loads((run / "eval_finetune_10pct.json").read_text())
    assert result["settings"]["labels"] == "10%" and not (run / "eval_finetune.json").exists()
    cfg = read_config(run / "finetune_10pct")
    assert cfg["data"]["labels"] == "10%" and cfg["data"]["labels_seed"] == 0
    step = load_checkpoint(run / "finetune_10pct" / "last.ckpt")["step"]
    assert 1 <= step <= 2 and result["last_top1"] is not None  # 8 labelled images at batch 8 (all 77: 9 or 10 steps)
