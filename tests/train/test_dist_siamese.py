"""Distributed correctness of the two-branch methods with 2 CPU processes on gloo.

One ``mp.spawn`` of 2 ranks (module fixture) runs every scenario; the parent computes the
one-process references and the tests compare:

* SimCLR: mean over ranks of the loss on B images each == one process on the 2B images, and the
  gradients after DDP averaging == the one-process gradients.
* MoCo (shuffle-BN off, ``bn_splits=1``): the same loss equality, and after one optimizer step the
  queue is the same on both ranks and equals the one-process queue (rank 0's keys, then rank 1's),
  with the method wrapped in DDP as the engine wraps it (``broadcast_buffers`` from the method).
* ``unveil.dist.shuffle_batch`` / ``unshuffle_batch``: unshuffle(shuffle(x)) == x, and the
  permutation is global (rows move between ranks).

Every BatchNorm is in eval mode in both runs: per-rank batch statistics are the one thing that
legitimately differs between 2 x B and 1 x 2B (torch's SyncBatchNorm has no CPU path).

Views: ``ViewPipeline`` draws each parameter as one batched tensor (``torch.rand(B, ...)``), so a
draw for 2B images cannot be split into two draws for B from any generator state. The test
therefore draws the 2B views once with the method's own pipeline and hands each rank its half
through a stub in place of ``method.views``; everything after the views (backbone, projector,
loss, DDP, queue) is the method's own ``forward``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from unveil.methods import DataInfo

B = 4  # images per rank
SIZE = 16
INFO = DataInfo(name="tiny", num_classes=2, image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

pytestmark = pytest.mark.dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FixedViews(nn.Module):
    """Stands in for a method's ``views``: returns the given views in turn (call 1 -> views[0], ...)."""

    def __init__(self, views: list[Tensor]):
        super().__init__()
        self.queue = list(views)

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        assert images.shape[0] == self.queue[0].shape[0]
        return self.queue.pop(0).clone()


def _bn_eval(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


def _images() -> Tensor:
    return torch.randint(0, 256, (2 * B, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def _simclr() -> nn.Module:
    from unveil.backbones import build_backbone
    from unveil.methods.simclr import SimCLR

    torch.manual_seed(0)
    return _bn_eval(SimCLR(build_backbone("resnet18", cifar_stem=False), INFO, temperature=0.5,
                           proj_hidden_dim=32, proj_dim=16))


def _moco(shuffle_bn: bool = False) -> nn.Module:
    from unveil.backbones import build_backbone
    from unveil.methods import build_method

    torch.manual_seed(0)
    method = build_method("moco", backbone=build_backbone("resnet18", cifar_stem=False), data_info=INFO,
                          queue_size=32, shuffle_bn=shuffle_bn, bn_splits=1, temperature=0.5)
    return _bn_eval(method)


def _views(method: nn.Module, images: Tensor, calls: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        return [method.views(images, g) for _ in range(calls)]


def _step(method: nn.Module, model: nn.Module, images: Tensor, views: list[Tensor], lr: float = 0.1) -> dict[str, Any]:
    """One training step as the engine makes it: forward, backward, SGD step, after_optimizer_step."""
    method.views = _FixedViews(views)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr)
    loss = model(images, torch.zeros(images.shape[0], dtype=torch.long), torch.Generator().manual_seed(3))["loss"]
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    opt.step()
    if hasattr(method, "after_optimizer_step"):
        method.after_optimizer_step(1, 10)
    return {"loss": loss.detach(), "grads": grads}


def _worker(rank: int, world: int, port: int, images: Tensor, views: dict[str, list[Tensor]], with_moco: bool,
            out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from unveil.dist import shuffle_batch, unshuffle_batch

    mine = slice(rank * B, (rank + 1) * B)
    result: dict[str, Any] = {}

    method = _simclr()
    model = DistributedDataParallel(method, broadcast_buffers=getattr(method, "ddp_broadcast_buffers", True))
    result["simclr"] = _step(method, model, images[mine], [v[mine] for v in views["simclr"]])

    if with_moco:
        method = _moco()
        model = DistributedDataParallel(method, broadcast_buffers=getattr(method, "ddp_broadcast_buffers", True))
        mv = [v[mine] for v in views["moco"]]
        r = [_step(method, model, images[mine], mv[:2]), _step(method, model, images[mine], mv[2:])]
        result["moco"] = {"steps": r, "queue": method.queue.keys.detach().clone(), "ptr": int(method.queue.ptr)}
        method = _moco(shuffle_bn=True)  # the keys go through the global shuffle and back
        model = DistributedDataParallel(method, broadcast_buffers=method.ddp_broadcast_buffers)
        result["moco_shuffled"] = _step(method, model, images[mine], mv[:2])

    shuffles = []
    for seed in range(3):
        x = torch.arange(rank * 6, rank * 6 + 6, dtype=torch.float32).view(6, 1).repeat(1, 2)
        g = torch.Generator().manual_seed(seed)  # the same seed on every rank; only rank 0's draw is used
        share, idx = shuffle_batch(x, g)
        shuffles.append({"x": x, "share": share, "back": unshuffle_batch(share * 1.0, idx)})
    result["shuffle"] = shuffles

    out[rank] = result
    dist.destroy_process_group()


def _moco_available() -> bool:
    from unveil import methods

    return "moco" in methods.available()


@pytest.fixture(scope="module")
def two_ranks() -> dict[str, Any]:
    images = _images()
    with_moco = _moco_available()
    views = {"simclr": _views(_simclr(), images, 2)}
    if with_moco:
        views["moco"] = _views(_moco(), images, 4)  # two steps
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), images, views, with_moco, out), nprocs=2, join=True)
    return {"images": images, "views": views, "ranks": [out[0], out[1]], "with_moco": with_moco}


def _close(a: Tensor, b: Tensor) -> bool:
    # Measured for SimCLR (2026-11-30, 2-core AMD EPYC box): loss differs by 2.4e-7, gradients by at most
    # 6.7e-8 (float32 summation order), largest gradient entry 0.27; MoCo (two steps): losses 2.4e-7,
    # gradients 4.3e-8 (largest entry 0.04-0.08), queue 1.1e-7. So 1e-6 is no free pass.
    return torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_simclr_two_ranks_equal_one_process_of_twice_the_batch(two_ranks):
    method = _simclr()
    ref = _step(method, method, two_ranks["images"], two_ranks["views"]["simclr"])
    r0, r1 = (r["simclr"] for r in two_ranks["ranks"])
    assert _close((r0["loss"] + r1["loss"]) / 2, ref["loss"]), (r0["loss"], r1["loss"], ref["loss"])
    assert not _close(r0["loss"], r1["loss"])  # the halves differ: the equality above is not trivial
    assert set(r0["grads"]) == set(ref["grads"])
    assert max(float(g.abs().max()) for g in ref["grads"].values()) > 1e-3
    for name, g in ref["grads"].items():  # DDP averaged: every rank holds the 2B gradient
        assert _close(r0["grads"][name], g), name
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name


def test_moco_two_ranks_equal_one_process_and_share_one_queue(two_ranks):
    """Two steps: the second step's loss reads the queue the first step wrote, so a queue that
    differed between ranks (or from one process) shows in the loss as well as in the buffer."""
    if not two_ranks["with_moco"]:
        pytest.skip("method moco is not registered yet")
    method = _moco()
    start = method.queue.keys.detach().clone()
    views = two_ranks["views"]["moco"]
    ref = [_step(method, method, two_ranks["images"], views[:2]), _step(method, method, two_ranks["images"], views[2:])]
    r0, r1 = (r["moco"] for r in two_ranks["ranks"])
    for step, one in enumerate(ref):
        a, b = r0["steps"][step], r1["steps"][step]
        assert _close((a["loss"] + b["loss"]) / 2, one["loss"]), (step, a["loss"], b["loss"], one["loss"])
        for name, g in one["grads"].items():
            assert _close(a["grads"][name], g), (step, name)
    # one queue: both ranks hold the same keys, written as one process writes the 2B keys (rank 0's, then rank 1's)
    assert torch.equal(r0["queue"], r1["queue"])
    assert r0["ptr"] == r1["ptr"] == int(method.queue.ptr) == 4 * B
    assert _close(r0["queue"], method.queue.keys)
    assert not _close(r0["queue"][: 4 * B], start[: 4 * B])  # the steps did write keys
    assert torch.equal(r0["queue"][4 * B :], start[4 * B :])


def test_moco_shuffle_bn_across_ranks_changes_nothing_with_batchnorm_in_eval(two_ranks):
    """Shuffle-BN only changes which BatchNorm statistics a key sees: with BatchNorm in eval mode the
    keys shuffled over both ranks and put back must give the unshuffled one-process loss."""
    if not two_ranks["with_moco"]:
        pytest.skip("method moco is not registered yet")
    method = _moco()
    ref = _step(method, method, two_ranks["images"], two_ranks["views"]["moco"][:2])
    a, b = (r["moco_shuffled"] for r in two_ranks["ranks"])
    assert _close((a["loss"] + b["loss"]) / 2, ref["loss"]), (a["loss"], b["loss"], ref["loss"])


def test_shuffle_batch_is_global_and_undone(two_ranks):
    crossed = 0
    for s0, s1 in zip(*(r["shuffle"] for r in two_ranks["ranks"])):
        assert torch.equal(s0["back"], s0["x"]) and torch.equal(s1["back"], s1["x"])
        shares = torch.cat([s0["share"], s1["share"]])
        assert torch.equal(shares[:, 0].sort().values, torch.arange(12.0))  # a permutation of the global batch
        crossed += int((s0["share"][:, 0] >= 6).sum())  # rank 1's rows that rank 0 received
    assert crossed > 0


def test_two_process_moco_cli_run_with_torchrun(tiny_folder, tmp_path):
    if not _moco_available():
        pytest.skip("method moco is not registered yet")
    from unveil.runs.checkpoint import load_checkpoint

    out = tmp_path / "ddp-moco"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "unveil.cli", "pretrain", "--method", "moco", "--data", str(tiny_folder), "--out", str(out),
           "data.image_size=16", "backbone.cifar_stem=false", "method.queue_size=64", "method.bn_splits=2", "train.batch_size=8",
           "train.epochs=1", "train.progress=false", "train.monitor=none", "train.precision=fp32"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(out / "last.ckpt")
    assert len(state["generator"]) == 2  # one generator state per rank
    assert state["step"] == (77 // 2) // 8
    keys = [k for k in state["model"] if k.endswith("queue.ptr")]
    assert keys and int(state["model"][keys[0]]) == (state["step"] * 2 * 8) % 64  # 2 ranks x 8 keys a step
