"""The held-out separation of a direction and the AUROC, on synthetic activations whose
answer is known: question content that dwarfs a small trait offset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from waluigi.directions.extract import auroc, separation


def test_auroc_counts_pairs_and_ties():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 2], [1, 2]) == 0.5
    assert auroc([2], [1, 2, 3]) == pytest.approx(0.5)
    assert auroc([], [1]) is None


def _questions(seed: int = 0, n_questions: int = 12, per_class: int = 3, trait: float = 4.0):
    """Each question has a big random content vector (off axis 0); a positive answer adds
    ``trait`` on axis 0. Returns (examples x 1 layer x hidden, labels, question of each example)."""
    rng = np.random.default_rng(seed)
    rows, labels, groups = [], [], []
    for q in range(n_questions):
        content = rng.normal(0, 20, size=16)
        content[0] = 0.0
        for label in (0, 1):
            for _ in range(per_class):
                x = content + rng.normal(0, 0.1, size=16)
                x[0] += trait * label
                rows.append(x)
                labels.append(label)
                groups.append(f"q{q}")
    return torch.tensor(np.array(rows), dtype=torch.float32).unsqueeze(1), labels, groups


def test_splitting_by_question_finds_the_trait_that_content_would_hide():
    x, labels, groups = _questions()
    grouped = separation(x, labels, seed=0, groups=groups)[0]
    assert grouped > 0.9
    # per-class halves of the same questions: content differences decide, not the trait
    ungrouped = [separation(x, labels, seed=s)[0] for s in range(5)]
    assert np.mean(ungrouped) < grouped - 0.2


def test_a_split_without_both_classes_gives_no_value():
    x = torch.zeros(4, 2, 3)
    assert separation(x, [1, 1, 1, 1], groups=["a", "a", "b", "b"]) == [None, None]
