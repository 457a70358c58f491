"""``unveil bench``: suites parse and validate, the runner writes its table, and resumes without redoing work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from unveil.bench.spec import (
    SCALES,
    available_suites,
    check_protocol_settings,
    data_present,
    load_suite,
    plan_suite,
)
from unveil.bench.suite import run_suite
from unveil.build import build_method_for
from unveil.cli import main
from unveil.errors import UserError
from unveil.methods.base import Method
from unveil.protocols.linear import linear_protocol_name
from unveil.runs.checkpoint import load_checkpoint
from unveil.train import engine


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))


def tiny_suite(folder: Path, path: Path, entries: list[dict]) -> Path:
    """A suite on the 16 px two-class folder: cheap context-patch (Conv4) and overlay-AE entries."""
    suite = {
        "title": "tiny", "caveats": ["synthetic images"],
        "overrides": [f"data.name={folder}", "data.image_size=16", "train.batch_size=16", "train.monitor=none",
                      "train.progress=false", "train.log_every_steps=1", "train.precision=fp32"],
        "scales": {"smoke": ["train.epochs=1", "eval.linear.epochs=2"], "cpu": ["train.epochs=2"], "gpu": []},
        "entries": entries,
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def cp_entry(name: str, *overrides: str) -> dict:
    return {"name": name, "recipe": "context_patch_conv4_cifar100", "overrides": ["method.grid=2", *overrides],
            "evaluate": [{"linear": {"epochs": 5, "lr": 1e-3}}, {"knn": {"k": 5}}],
            "paper": {"linear": 24.55}, "paper_setting": "CIFAR-100"}


@pytest.mark.slow
def test_runner_writes_table_with_paper_columns_and_figures(tiny_folder, tmp_path):
    ae = {"name": "ae", "recipe": "overlay_cifar10", "overrides": ["data.subset=32"], "evaluate": [{"finetune": {"epochs": 1, "batch_size": 16}},
                                                                   {"linear": {"epochs": 2}}, "knn"],
          "paper": {"finetune": 38.1, "linear": 7.6}, "paper_setting": "Caltech-256"}
    path = tiny_suite(tiny_folder, tmp_path / "tiny.yaml", [cp_entry("cp"), ae])
    out = tmp_path / "out"
    rows = run_suite(path, "smoke", out)
    assert [r["status"] for r in rows] == ["done", "done"]
    with (out / "results.csv").open() as f:
        table = {r["entry"]: r for r in csv.DictReader(f)}
    assert {"paper_finetune_top1", "paper_linear_top1", "finetune_best_top1", "finetune_last_top1",
            "linear_best_top1", "linear_last_top1", "knn_top1", "scale"} <= set(table["ae"])
    assert float(table["ae"]["paper_finetune_top1"]) == 38.1 and table["cp"]["paper_finetune_top1"] == ""
    # The evaluations ran with the requested settings, and the table shows what they measured.
    ft = json.loads((out / "ae" / "eval_finetune.json").read_text())
    assert (ft["settings"]["epochs"], ft["settings"]["batch_size"], len(ft["history"])) == (1, 16, 1)
    assert float(table["ae"]["finetune_last_top1"]) == ft["history"][-1]["test_top1"]
    lin = json.loads((out / "cp" / "eval_linear.json").read_text())
    assert lin["settings"]["epochs"] == 2 and len(lin["history"]) == 2  # the scale's eval.linear.epochs=2 beats 5
    assert float(table["cp"]["linear_last_top1"]) == pytest.approx(lin["history"][-1]["top1"], abs=0.05)
    assert float(table["cp"]["linear_best_top1"]) == pytest.approx(max(r["top1"] for r in lin["history"]), abs=0.05)
    assert table["cp"]["finetune_best_top1"] == "" and table["ae"]["scale"] == "smoke"
    assert table["cp"]["train_images"] == "77" and table["ae"]["train_images"] == "32"  # 96 images, 20 % held out
    md = (out / "results.md").read_text()
    assert "paper fine-tune" in md and "| 38.1 |" in md and "synthetic images" in md and "JPEG" in md
    for fig in ("loss_curves.png", "recon_ae.png", "recon_cp.png"):
        assert (out / "figures" / fig).stat().st_size > 1000, fig
        assert f"figures/{fig}" in md
    assert json.loads((out / "ae" / "eval_finetune.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_interrupted_suite_resumes_without_redoing_finished_work(tiny_folder, tmp_path, monkeypatch, capsys):
    path = tiny_suite(tiny_folder, tmp_path / "tiny.yaml", [cp_entry("first"), cp_entry("second", "train.epochs=2")])
    out = tmp_path / "out"
    rows = run_suite(path, "smoke", out, only=["first"])  # entries can be run piecemeal
    assert [r["status"] for r in rows] == ["done", "not run"]
    real_save = engine.save_checkpoint

    def crash_after_first_epoch_of_second(ckpt_path, state):
        real_save(ckpt_path, state)
        if "second" in str(ckpt_path):
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", crash_after_first_epoch_of_second)
    with pytest.raises(KeyboardInterrupt):
        run_suite(path, "smoke", out)
    assert "interrupted" in (out / "results.md").read_text()
    steps_per_epoch = 77 // 16
    assert load_checkpoint(out / "second" / "last.ckpt")["step"] == steps_per_epoch
    kept = {p: p.stat().st_mtime_ns for p in (out / "first").glob("*") if p.is_file()}
    assert out / "first" / "eval_linear.json" in kept

    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    calls = []
    real_train = engine.train

    def spy(cfg, resume=None):
        calls.append((Path(cfg["out"]).name, resume))
        return real_train(cfg, resume=resume)

    monkeypatch.setattr(engine, "train", spy)
    rows = run_suite(path, "smoke", out)
    assert calls == [("second", out / "second")]  # the first entry was not retrained, the second continued
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items() if p.suffix in (".ckpt", ".json") and
               p.name != "bench_timings.json")
    assert load_checkpoint(out / "second" / "last.ckpt")["step"] == 2 * steps_per_epoch
    assert [r["status"] for r in rows] == ["done", "done"] and rows[1]["linear_best_top1"] is not None

    # A changed evaluation setting reruns that evaluation (and only it), saying so; features are reused.
    knn_mtime = (out / "first" / "eval_knn.json").stat().st_mtime_ns
    features = sorted((out / "first").glob("features_*.safetensors"))
    capsys.readouterr()
    run_suite(path, "smoke", out, overrides=["eval.linear.epochs=3"])
    err = capsys.readouterr().err
    assert err.count("eval_linear.json is not reused") == 2 and "epochs: 2 -> 3" in err and "eval_knn" not in err
    for entry in ("first", "second"):
        lin = json.loads((out / entry / "eval_linear.json").read_text())
        assert lin["settings"]["epochs"] == 3 and len(lin["history"]) == 3
    assert (out / "first" / "eval_knn.json").stat().st_mtime_ns == knn_mtime
    assert sorted((out / "first").glob("features_*.safetensors")) == features

    with pytest.raises(UserError, match="other settings"):  # a finished run is never reused silently
        run_suite(path, "smoke", out, overrides=["train.lr=0.5"])


@pytest.mark.parametrize("name", available_suites())
def test_shipped_suites_resolve_and_build_at_every_scale(name, tmp_path):
    from unveil.data.registry import REGISTERED

    suite = load_suite(name)
    assert len(suite.entries) >= 4 and set(suite.scales) == set(SCALES)
    built = set()
    for scale in SCALES:
        planned = plan_suite(suite, scale, tmp_path)
        assert [p.entry.name for p in planned] == suite.entry_names()
        finetune = next((p.evals["finetune"] for p in planned if "finetune" in p.evals), None)
        for p in (p for p in planned if p.entry.train_as):  # supervised from scratch = the fine-tune protocol
            assert finetune and all(p.cfg["train"][k] == finetune[k] for k in ("epochs", "lr", "batch_size"))
            assert p.cfg["method"]["augment"] is finetune["augment"] is False
        # The papers' protocols: the overlay paper fine-tunes without augmentation and probes the raw
        # pooled features; the context-patch paper's linear probe is the RR protocol; masked modelling
        # fine-tunes a ViT with the protocol picked for it (augmented) and probes through MAE's BatchNorm head.
        for p in planned:
            if "finetune" in p.evals and name != "masked-modelling":
                assert p.evals["finetune"]["augment"] is False
            if "linear" in p.evals:
                assert p.evals["linear"]["standardize"] is False
                if name == "masked-modelling":
                    assert p.evals["linear"]["head_bn"] is True and p.evals["linear"]["optimizer"] == "lars"
                if name == "context-patch" and scale != "smoke":
                    assert linear_protocol_name(**p.evals["linear"]).startswith("RR")
        for p in planned:
            # Every row cites the paper's number, except our own controls (no pretraining), which say so.
            assert p.entry.paper_setting and p.evals
            assert p.entry.paper or (p.cfg["train"]["epochs"] == 0 and "not in the paper" in p.entry.paper_setting) \
                or p.entry.paper_setting.startswith("not recovered")  # MSCN's lost trajectory numbers say so
            assert set(p.entry.paper) <= set(p.evals) | ({"finetune"} if "monitor" in p.evals else set())
            data = p.cfg["data"]["name"]
            if scale != "gpu":
                assert data == "cifar10" and p.cfg["data"]["subset"], "smoke/cpu scales use a CIFAR-10 subset"
            elif not data_present("cifar100", None) and p.entry.recipe.endswith("cifar100"):
                assert data == "cifar10" and any("cifar100 not found" in n for n in p.notes)
            key = json.dumps([p.cfg["method"], p.cfg["backbone"], data], sort_keys=True)
            if key not in built:  # the method section builds (catches misspelt method settings)
                built.add(key)
                info = {"name": data, "num_classes": len(REGISTERED[data].classes or range(100)),
                        "image_size": p.cfg["data"]["image_size"] or 32, "mean": (0.5,) * 3, "std": (0.25,) * 3}
                assert hasattr(build_method_for(p.cfg, dataset_info=info), "embed")


@pytest.mark.slow
def test_cli_list_dry_run_and_one_line_errors(capsys, tmp_path):
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "overlay" in listed and "context-patch" in listed and "supervised-scratch" in listed
    assert main(["bench", "overlay", "--scale", "cpu", "--dry-run", "--only", "mask-2pct", "train.seed=3"]) == 0
    assert "mask-2pct" in capsys.readouterr().out
    assert main(["bench", "nope", "--scale", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "unknown suite 'nope'" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "overlay", "--scale", "smoke", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert "no entry nope" in capsys.readouterr().err
    assert main(["bench", "overlay", "--scale", "smoke", "--out", str(tmp_path), "eval.bogus.epochs=1"]) == 2
    assert "eval.bogus" in capsys.readouterr().err
    assert main(["bench", "overlay", "--scale", "smoke", "eval.linear.epoch=1", "--out", str(tmp_path)]) == 2
    assert "bad linear setting" in capsys.readouterr().err
    assert main(["bench", "overlay", "--scale", "smoke", "eval.linear.schedule=cosin", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "linear.schedule must be one of cosine, constant" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "overlay", "--scale", "smoke", "eval.finetune.augment=maybe", "--out", str(tmp_path)]) == 2
    assert "finetune.augment must be true or false" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["overlay", "context-patch"])
def test_smoke_scale_of_shipped_suites_on_cifar10(name, cifar10_dir, tmp_path, monkeypatch, capsys):
    """Every entry of both shipped suites runs end to end at smoke scale on real CIFAR-10 images."""
    monkeypatch.setenv("UNVEIL_CIFAR10", str(cifar10_dir))
    out = tmp_path / name
    assert main(["bench", name, "--scale", "smoke", "--out", str(out)]) == 0
    assert str(out / "results.md") in capsys.readouterr().out
    with (out / "results.csv").open() as f:
        rows = {r["entry"]: r for r in csv.DictReader(f)}
    assert list(rows) == load_suite(name).entry_names()
    planned = {p.entry.name: p for p in plan_suite(load_suite(name), "smoke", out)}
    for entry, row in rows.items():
        assert row["status"] == "done" and row["data"].startswith("cifar10"), (entry, row)
        for kind, settings in planned[entry].evals.items():  # each evaluation ran with the suite's settings
            saved = json.loads((out / entry / f"eval_{kind}.json").read_text())
            assert all(saved["settings"][k] == v for k, v in settings.items()), (entry, kind)
            if kind in ("linear", "finetune"):
                assert len(saved["history"]) == settings["epochs"], (entry, kind)
        assert float(row["knn_top1"]) == json.loads((out / entry / "eval_knn.json").read_text())["top1"]
    if name == "overlay":
        assert float(rows["overlay-a0.3"]["paper_finetune_top1"]) == 38.1
        monitor = json.loads((out / "supervised-scratch" / "eval_monitor.json").read_text())
        assert float(rows["supervised-scratch"]["finetune_best_top1"]) == monitor["best_top1"]


def test_suite_numbers_are_read_as_recipes_read_them(tmp_path):
    """A suite is YAML written by people: ``lr: 1e-3`` must be the float 0.001, as in a recipe (PyYAML's
    safe loader, YAML 1.1, reads a float without a dot as the string '1e-3')."""
    path = tmp_path / "numbers.yaml"
    path.write_text("title: numbers\nentries:\n  - name: cp\n    recipe: context_patch_conv4_cifar100\n"
                    "    evaluate:\n      - linear: {epochs: 5, lr: 1e-3, weight_decay: 5e-4}\n"
                    "    paper: {linear: 2.5e1}\n")
    entry = load_suite(path).entries[0]
    assert entry.evaluate["linear"]["lr"] == 0.001 and isinstance(entry.evaluate["linear"]["lr"], float)
    assert entry.evaluate["linear"]["weight_decay"] == 5e-4 and entry.paper == {"linear": 25.0}
    check_protocol_settings("linear", entry.evaluate["linear"], "numbers")  # a float passes the protocol's checks


@pytest.mark.slow
def test_knn_on_the_head_beside_the_backbone(tiny_folder, tmp_path, capsys):
    """kNN with ``features: head`` (paper 5's monitor, on the 128-d head output) is its own evaluation:
    saved as eval_knn_head.json beside eval_knn.json, shown as its own column, the untrained row too,
    reused on a second run; a method without a head says so in one line."""
    from unveil.protocols._shared import head_embedder
    from unveil.protocols.knn import evaluate_knn

    both = [{"knn": {"k": 5}}, {"knn": {"k": 5, "features": "head"}}]
    moco = {"name": "moco", "recipe": "moco_cifar10", "evaluate": both, "paper": {"knn": 88.97}, "paper_setting": "x",
            "overrides": ["backbone.name=rr_conv4", "method.bn_splits=2", "method.queue_size=64"]}
    untrained = {**moco, "name": "untrained", "overrides": [*moco["overrides"], "train.epochs=0"],
                 "paper": {}, "paper_setting": "not in the paper: untrained"}
    path = tiny_suite(tiny_folder, tmp_path / "tiny.yaml", [moco, untrained])
    assert list(load_suite(path).entries[0].evaluate) == ["knn", "knn_head"]
    out = tmp_path / "out"
    rows = run_suite(path, "smoke", out, figures=False)
    assert [r["status"] for r in rows] == ["done", "done"]
    with (out / "results.csv").open() as f:
        table = {r["entry"]: r for r in csv.DictReader(f)}
    for entry in ("moco", "untrained"):
        backbone = json.loads((out / entry / "eval_knn.json").read_text())
        head = json.loads((out / entry / "eval_knn_head.json").read_text())
        assert (backbone["feature_dim"], head["feature_dim"]) == (64, 128)  # rr_conv4's 64 channels; the 128-d head
        assert head["settings"]["features"] == "head" and "features" not in backbone["settings"]
        assert float(table[entry]["knn_head_top1"]) == head["top1"] and float(table[entry]["knn_top1"]) == backbone["top1"]
    assert "| kNN | kNN head |" in (out / "results.md").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "moco").glob("eval_knn*.json")}
    capsys.readouterr()
    run_suite(path, "smoke", out, figures=False)  # both readings are reused, neither overwrites the other
    assert {p: p.stat().st_mtime_ns for p in (out / "moco").glob("eval_knn*.json")} == mtimes
    assert "not reused" not in capsys.readouterr().err
    # the head embedding of a trained run, directly: the query head's output, as MoCo's embed_head gives it
    again = evaluate_knn(out / "moco", k=5, features="head")
    assert again["top1"] == json.loads((out / "moco" / "eval_knn_head.json").read_text())["top1"]

    with pytest.raises(UserError) as err:  # an autoencoder has no head to embed with
        head_embedder(Method(), "denoising_ae")  # the contract's default: no embed_head of its own
    assert "method denoising_ae has no projection head" in str(err.value) and "\n" not in str(err.value)
    bad = dict(both[1]["knn"], features="projector")
    with pytest.raises(UserError, match="knn.features must be one of backbone, head"):
        check_protocol_settings("knn", bad, "tiny")
    twice = tmp_path / "twice.yaml"
    tiny_suite(tiny_folder, twice, [{**moco, "evaluate": [*both, {"knn": {"k": 7, "features": "head"}}]}])
    with pytest.raises(UserError, match="lists knn_head twice"):
        load_suite(twice)


def test_rewriting_the_table_does_not_load_runs_that_cannot_reconstruct(tmp_path, monkeypatch):
    """The table and figures are rewritten after every entry; a finished run of a method without a
    ``reconstruct`` hook is skipped by asking its class, not by loading it again each time (that was half of a
    20-entry smoke suite's time: 420 loads)."""
    from unveil.bench import figures
    from unveil.runs import checkpoint
    from unveil.runs.checkpoint import CKPT_NAME
    from unveil.runs.logs import SUMMARY

    planned = {p.entry.name: p for p in plan_suite(load_suite("masked-siamese"), "smoke", tmp_path)}
    simclr = planned["simclr"]
    simclr.run_dir.mkdir(parents=True)
    (simclr.run_dir / CKPT_NAME).write_bytes(b"")  # "done" on disk; loading it would fail
    (simclr.run_dir / SUMMARY).write_text("{}")

    def no_loading(*args, **kwargs):
        raise AssertionError("load_run called for a method that cannot reconstruct")

    monkeypatch.setattr(checkpoint, "load_run", no_loading)
    assert figures.reconstruction(simclr, tmp_path / "recon_simclr.png") is None
