"""The label-free score on cases whose answer is known, and the rank agreement it is judged by."""

from __future__ import annotations

import pytest
import torch

from unveil.eval.rankme import kendall_tau, rankme


def _embeddings(spectrum: list[float], n: int = 2000, seed: int = 0) -> torch.Tensor:
    """Gaussian embeddings with standard deviation ``spectrum[k]`` along direction k, randomly rotated."""
    g = torch.Generator().manual_seed(seed)
    d = len(spectrum)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return (torch.randn(n, d, generator=g) * torch.tensor(spectrum)) @ rotation


def test_rankme_is_the_dimension_when_isotropic_and_one_when_collapsed():
    assert rankme(_embeddings([1.0] * 32)) == pytest.approx(32, rel=0.03)
    assert rankme(_embeddings([1.0] + [0.0] * 31)) == pytest.approx(1.0, abs=0.01)
    assert rankme(_embeddings([1.0] * 8 + [0.0] * 24)) == pytest.approx(8, rel=0.03)


def test_rankme_orders_encoders_by_how_many_directions_they_use():
    # four "encoders" whose embeddings spread over 2, 4, 8 and 16 of 32 directions (the known ranking)
    scores = [rankme(_embeddings([1.0] * k + [0.01] * (32 - k), seed=k)) for k in (2, 4, 8, 16)]
    assert scores == sorted(scores) and scores[-1] > 2 * scores[1]
    # a decaying spectrum sits between the flat ones of the same width
    decaying = rankme(_embeddings([0.7 ** k for k in range(32)]))
    assert 2 < decaying < 32


def test_kendall_tau_counts_agreeing_pairs_and_handles_ties():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)  # 10 pairs, 2 swapped: (8 - 2) / 10
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)  # tau-b: 4 agree, one tie each: 4 / 5
    with pytest.raises(ValueError):
        kendall_tau([1.0], [1.0])
