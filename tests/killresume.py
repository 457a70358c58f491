"""Shared by the resume tests: train through the CLI, ``kill -9`` it mid-run, ``--resume``, and
compare the final checkpoint with an uninterrupted run's (every tensor of the state, buffers
such as queues and EMA targets included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from unveil.runs.checkpoint import load_checkpoint

CLI = [sys.executable, "-m", "unveil.cli", "pretrain"]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "UNVEIL_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}


def _saved_step(run_dir: Path) -> int:
    try:
        return int(load_checkpoint(run_dir / "last.ckpt")["step"])
    except Exception:  # not written yet (or being renamed into place)
        return -1


def kill_and_resume(args: list[str], tmp: Path, kill_after_step: int, timeout_s: float = 300) -> tuple[dict, dict]:
    """(uninterrupted final state, killed-then-resumed final state) of ``unveil pretrain ARGS``.

    ``args`` must set ``train.ckpt_every_steps`` so a mid-run checkpoint exists; the run is killed
    with SIGKILL once a checkpoint of at least ``kill_after_step`` steps is on disk."""
    env = _env(tmp)
    full, part = tmp / "full", tmp / "part"
    subprocess.run([*CLI, *args, f"--out={full}"], env=env, check=True, capture_output=True, timeout=timeout_s)
    proc = subprocess.Popen([*CLI, *args, f"--out={part}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while _saved_step(part) < kill_after_step:
        assert proc.poll() is None, "the run ended before it could be killed: raise kill_after_step's headroom"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _saved_step(part)
    reference = load_checkpoint(full / "last.ckpt")
    assert 0 < killed_at < reference["step"], (killed_at, reference["step"])
    subprocess.run([*CLI, f"--resume={part}"], env=env, check=True, capture_output=True, timeout=timeout_s)
    return reference, load_checkpoint(part / "last.ckpt")


def assert_same_state(reference: dict, resumed: dict) -> None:
    assert resumed["step"] == reference["step"]
    assert reference["model"].keys() == resumed["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
