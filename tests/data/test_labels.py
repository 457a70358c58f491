"""Low-shot label subsets: stratified, seeded, every class present, and bad shares in one line."""

from __future__ import annotations

import numpy as np
import pytest

from unveil.data.labels import labels_suffix, parse_labels, pick_labelled
from unveil.errors import UserError

# 1,000 images of 3 unbalanced classes (500 / 300 / 200) and 7 unlabelled ones (-1)
LABELS = np.array([0] * 500 + [1] * 300 + [2] * 200 + [-1] * 7)


@pytest.mark.parametrize("spec, per_class", [("10%", (50, 30, 20)), ("1%", (5, 3, 2)), ("0.1%", (1, 1, 1)),
                                             ("250", (250, 250, 200)), (4, (4, 4, 4)), ("100%", (500, 300, 200))])
def test_each_class_gets_its_share_or_its_count_and_at_least_one(spec, per_class):
    picked = pick_labelled(LABELS, spec, seed=0)
    counts = tuple(int((LABELS[picked] == c).sum()) for c in range(3))
    assert counts == per_class and (LABELS[picked] >= 0).all()  # unlabelled images are never drawn
    assert np.array_equal(picked, np.unique(picked))  # sorted, no repeats


def test_the_seed_names_the_draw():
    a, b, c = (pick_labelled(LABELS, "10%", seed=s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and len(a) == len(c)
    assert np.array_equal(pick_labelled(LABELS, None), np.arange(len(LABELS)))


@pytest.mark.parametrize("bad", ["0%", "150%", "-3", "0", "ten", "1.5", True])
def test_bad_shares_are_one_line(bad):
    with pytest.raises(UserError, match="labels must be a share") as exc:
        parse_labels(bad)
    assert "\n" not in str(exc.value)


def test_results_are_named_by_their_share():
    assert [labels_suffix(s) for s in (None, "1%", "10%", "0.5%", "5")] == ["", "_1pct", "_10pct", "_0p5pct",
                                                                              "_5perclass"]
