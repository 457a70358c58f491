"""Two torchrun "nodes" on this machine (``--nnodes=2``, one process each, gloo), training from the
disk cache: with a cache folder per node (node-local disks) each node builds its own; with one
shared folder (a shared file system) one process builds each split and the other waits, then reads
it. Both runs train to the same final weights, since they see the same data in the same order."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from unveil.runs.checkpoint import load_checkpoint

BUILD_LINE = "into the disk cache"  # the builder's one line per split it decodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(folder: Path, out: Path, caches: tuple[Path, Path]) -> list[str]:
    """Launch node 0 and node 1 at once; return their stderr."""
    port = _free_port()
    procs = []
    for node, cache in enumerate(caches):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "UNVEIL_CACHE": str(cache)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
               "-m", "unveil.cli", "pretrain", "--data", str(folder), "--out", str(out), "data.storage=disk",
               "data.image_size=16", "backbone.cifar_stem=false", "method.proj_hidden_dim=64", "train.batch_size=8",
               "train.epochs=1", "train.progress=false", "train.monitor=none", "train.precision=fp32"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        errs.append(err)
    return errs


@pytest.mark.slow
@pytest.mark.dist
def test_two_nodes_with_local_or_shared_disk_caches(tiny_folder, tmp_path):
    local = _two_nodes(tiny_folder, tmp_path / "local", (tmp_path / "node0", tmp_path / "node1"))
    assert [e.count(BUILD_LINE) for e in local] == [2, 2]  # each node decodes train and test into its own disk
    for node in ("node0", "node1"):
        assert len(list((tmp_path / node).glob("*.u8"))) == 2

    shared = _two_nodes(tiny_folder, tmp_path / "shared", (tmp_path / "nfs", tmp_path / "nfs"))
    assert sum(e.count(BUILD_LINE) for e in shared) == 2  # one build per split, whichever node got the lock
    assert len(list((tmp_path / "nfs").glob("*.u8"))) == 2

    a, b = load_checkpoint(tmp_path / "local" / "last.ckpt"), load_checkpoint(tmp_path / "shared" / "last.ckpt")
    assert a["step"] == b["step"] == (77 // 2) // 8
    for key, value in a["model"].items():
        assert value.equal(b["model"][key]), key
