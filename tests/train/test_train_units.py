"""Units of the training engine: schedule, LARS, loader order, NT-Xent, kNN, linear probe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unveil.config import DEFAULTS
from unveil.eval.knn import knn_accuracy, knn_scores
from unveil.eval.linear import linear_probe
from unveil.losses.ntxent import nt_xent
from unveil.optim import LARS, lr_at
from unveil.train.loader import TensorBatches


def _tcfg(**kw):
    t = dict(DEFAULTS["train"])
    t.update(kw)
    return t


def test_warmup_then_cosine():
    t = _tcfg(warmup_epochs=1, schedule="cosine", min_lr=0.0)
    lrs = [lr_at(s, 100, 10, 1.0, t) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    assert lrs[-1] < 0.01


def test_cosine_epoch_is_constant_within_an_epoch():
    t = _tcfg(schedule="cosine_epoch")
    assert lr_at(10, 100, 10, 1.0, t) == lr_at(19, 100, 10, 1.0, t)
    assert lr_at(50, 100, 10, 1.0, t) == pytest.approx(0.5)


def test_lars_scales_update_by_trust_ratio():
    p = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([{"params": [p], "lars": True, "weight_decay": 0.0}], lr=1.0, momentum=0.0, trust_coefficient=0.001)
    p.grad = torch.full((4,), 100.0)
    opt.step()
    # update = lr * trust * grad = 0.001 * |p|/|g| * g = 0.001 * 4/200 * 100 = 0.002
    assert torch.allclose(p.detach(), torch.full((4,), 2.0 - 0.002))


def test_loader_covers_each_rank_disjointly_and_is_reproducible():
    x = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8).expand(100, 3, 1, 1)
    y = torch.arange(100)
    seen = []
    for rank in range(2):
        b = TensorBatches(x, y, 10, seed=3, rank=rank, world=2)
        assert len(b) == 5
        seen += [lab for _, labels in b.epoch(0) for lab in labels.tolist()]
    assert sorted(seen) == list(range(100))
    a = TensorBatches(x, y, 10, seed=3)
    first = [lab.tolist() for _, lab in a.epoch(1)]
    assert [lab.tolist() for _, lab in a.epoch(1, start_step=2)] == first[2:]
    assert first != [lab.tolist() for _, lab in a.epoch(2)]


def test_background_batches_keep_the_order_and_resume_point():
    """The prefetching thread changes when a batch is gathered, never which: the same batches as the
    in-thread gather, from a mid-epoch start too (exact --resume)."""
    x = torch.randint(0, 256, (300, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(300)
    b = TensorBatches(x, y, 32, seed=5)
    for start in (0, 3):
        plain = list(b.epoch(2, start))
        ahead = list(b.device_batches(2, start, torch.device("cpu"), prefetch=3))
        assert len(plain) == len(ahead) == len(b) - start
        for (xi, yi), (xa, ya) in zip(plain, ahead):
            assert torch.equal(xi, xa) and torch.equal(yi, ya)
            assert torch.equal(xa, x[ya])  # rows and labels stay paired


def test_background_batches_stop_their_thread_and_pass_errors_on():
    import threading

    x = torch.zeros(64, 3, 2, 2, dtype=torch.uint8)
    b = TensorBatches(x, torch.arange(64), 8, seed=0)
    for k, _ in enumerate(b.device_batches(0, 0, torch.device("cpu"), prefetch=2)):
        if k == 1:
            break  # leaving early (max_steps) must not leave a thread behind
    threading.Event().wait(0.3)
    assert not [t for t in threading.enumerate() if t.name == "unveil-batches"]

    class Broken(TensorBatches):
        def _gather(self, sel, pin):
            if int(sel[0]) == int(self.indices(0)[16]):
                raise OSError("read error in the cache file")
            return super()._gather(sel, pin)

    got = []
    with pytest.raises(OSError, match="read error"):
        for images, _ in Broken(x, torch.arange(64), 8, seed=0).device_batches(0, 0, torch.device("cpu"), prefetch=2):
            got.append(images)
    assert len(got) == 2  # the batches before the failing one arrived, in order


def _ntxent_reference(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / t
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def test_ntxent_matches_reference_and_is_low_for_aligned_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    assert nt_xent(z1, z2, 0.5) == pytest.approx(_ntxent_reference(z1, z2, 0.5).item(), rel=1e-5)
    assert nt_xent(z1, z1 + 0.01 * z2, 0.1) < nt_xent(z1, z2, 0.1)


def test_knn_perfect_on_separable_clusters_and_chunking_invariant():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 32, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(50)
    bank = centers[labels] + torch.randn(150, 32, generator=g)
    query = centers[labels[:30]] + torch.randn(30, 32, generator=g)
    acc = knn_accuracy(bank, labels, query, labels[:30], 3, k=20)
    assert acc["top1"] == 100.0
    s1 = knn_scores(bank, labels, query, 3, k=20, chunk_size=7)
    s2 = knn_scores(bank, labels, query, 3, k=20, chunk_size=1000)
    assert torch.allclose(s1, s2)


def test_knn_weights_follow_temperature():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.2]])
    scores = knn_scores(bank, labels, query, 2, k=3, temperature=0.1)
    sim = F.normalize(query, dim=1) @ F.normalize(bank, dim=1).T
    expected = torch.stack([math.e ** (sim[0, 0] / 0.1), 2 * math.e ** (sim[0, 1] / 0.1)])
    assert torch.allclose(scores[0], expected, rtol=1e-5)


def test_linear_probe_learns_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 4, generator=g)
    x = torch.randn(2500, 20, generator=g)
    y = (x @ w).argmax(1)
    res = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:], 4, epochs=20, lr=1e-2)
    assert res["last_top1"] > 80  # measured 90 (chance 25)
    assert res["best_top1"] == max(r["top1"] for r in res["history"])  # best is the best epoch, not another
    assert len(res["history"]) == 20


def test_atomic_write_gives_the_umask_mode_and_leaves_no_temp_file(tmp_path):
    import os
    import stat

    from unveil.io import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o666 & ~umask  # what open() gives (0644 under the usual umask), not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
