"""The bench's accuracy pieces: fixed split, logistic head, perplexity."""

import math

import pytest
import torch

from zq_compile.benchmarks.accuracy import LogisticHead, fixed_split, nll_sum, perplexity, token_windows


def test_fixed_split_is_deterministic_stratified_and_disjoint():
    labels = [0] * 100 + [1] * 100
    train, test = fixed_split(labels)
    assert (train, test) == fixed_split(labels)
    assert not set(train) & set(test)
    assert sorted(train + test) == list(range(200))
    assert sum(labels[i] for i in test) == len(test) // 2 == 30


def test_fixed_split_changes_with_seed():
    labels = [0, 1] * 50
    assert fixed_split(labels, seed=0) != fixed_split(labels, seed=1)


def test_logistic_head_learns_a_linear_boundary_even_under_inference_mode():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen)
    y = (x[:, 0] - 0.5 * x[:, 3] > 0).long()
    with torch.inference_mode():  # the bench runs everything under inference mode
        head = LogisticHead.fit(x[:200], y[:200])
    assert head.accuracy(x[200:], y[200:]) > 0.9


def test_logistic_head_on_constant_feature_does_not_divide_by_zero():
    x = torch.cat([torch.randn(50, 2), torch.ones(50, 1)], dim=1)
    y = (x[:, 0] > 0).long()
    head = LogisticHead.fit(x, y)
    assert torch.isfinite(head.weight).all()
    assert head.accuracy(x, y) > 0.9


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    vocab = 37
    ids = torch.randint(0, vocab, (2, 9))
    total, count = nll_sum(torch.zeros(2, 9, vocab), ids)
    assert count == 16
    assert perplexity(total, count) == pytest.approx(vocab)


def test_perplexity_of_a_certain_model_is_one():
    ids = torch.tensor([[1, 2, 3, 4]])
    logits = torch.full((1, 4, 5), -1e4)
    logits[0, torch.arange(3), ids[0, 1:]] = 1e4
    total, count = nll_sum(logits, ids)
    assert math.isclose(perplexity(total, count), 1.0, abs_tol=1e-6)


def test_token_windows_take_the_first_windows_and_refuse_short_text():
    ids = torch.arange(100)
    w = token_windows(ids, 10, 3)
    assert w.shape == (3, 10) and w[2, 0].item() == 20
    with pytest.raises(ValueError, match="need 110 tokens"):
        token_windows(ids, 11, 10)


def test_cross_validated_head_picks_an_l2_from_the_grid_and_generalises():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 10, generator=gen)
    y = (x[:, :3].sum(1) > 0).long()
    head, l2 = LogisticHead.fit_cv(x[:200], y[:200])
    assert l2 in (1e-2, 1e-1, 1.0, 10.0)
    assert head.accuracy(x[200:], y[200:]) > 0.85
