"""scripts/gpu-check.sh in its CPU mode (`--tiny`): both siamese suites at `smoke` scale on real
CIFAR-10 images, through the same script a GPU machine runs at `gpu` scale."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from unveil.bench.spec import load_suite

REPO = Path(__file__).resolve().parents[1]
SUITES = ("mixtures", "masked-siamese")


@pytest.mark.slow
def test_gpu_check_tiny_runs_both_suites_at_smoke(cifar10_dir, tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "UNVEIL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--tiny", "--data", str(cifar10_dir),
                           "--out", str(out), "--budget-s", "1500"], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "torch" in (out / "env.txt").read_text()
    for suite in SUITES:
        assert f"## {suite}: finished" in summary
        with (out / suite / "results.csv").open() as f:
            rows = {r["entry"]: r for r in csv.DictReader(f)}
        assert list(rows) == load_suite(suite).entry_names()
        for entry, row in rows.items():
            assert row["status"] == "done" and row["scale"] == "smoke", (suite, entry, row["status"])
            assert row["knn_top1"] != "", (suite, entry)  # every entry was evaluated (a number, not a dash)


def test_gpu_check_refuses_bad_arguments_in_one_line(tmp_path):
    for args, needle in ((["--bogus"], "unknown argument '--bogus'"),
                         (["--data", str(tmp_path)], f"no train.parquet in --data {tmp_path}")):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), *args], capture_output=True, text=True,
                              env={**os.environ, "UNVEIL_CIFAR10": ""}, timeout=60)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
