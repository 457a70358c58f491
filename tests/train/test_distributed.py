"""Distributed correctness with 2 CPU processes on gloo: NT-Xent gathers negatives from all ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unveil.losses.ntxent import nt_xent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = z1.shape[0] // world
    a1 = z1[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    a2 = z2[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    loss = nt_xent(a1, a2, 0.2)
    loss.backward()
    out[rank] = (loss.detach(), a1.grad.clone(), a2.grad.clone())
    dist.destroy_process_group()


@pytest.mark.dist
def test_ntxent_two_ranks_equals_one_big_batch():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), z1, z2, out), nprocs=2, join=True)

    r1, r2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = nt_xent(r1, r2, 0.2)
    full.backward()
    mean_loss = (out[0][0] + out[1][0]) / 2
    assert torch.allclose(mean_loss, full.detach(), atol=1e-6)
    # DDP averages gradients over ranks: each rank's local gradient / 2 must equal the big-batch gradient.
    # (all_gather's backward sums the gradient contributions of every rank into the local slice.)
    g1 = torch.cat([out[0][1], out[1][1]]) / 2
    g2 = torch.cat([out[0][2], out[1][2]]) / 2
    assert torch.allclose(g1, r1.grad, atol=1e-6)
    assert torch.allclose(g2, r2.grad, atol=1e-6)
