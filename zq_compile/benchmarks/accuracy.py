"""Accuracy measures the bench applies to every contender, in plain torch (no scikit-learn).

- ``fixed_split``: a seeded, label-stratified train/test split of the polarity sentences, the same
  on every run and machine.
- ``LogisticHead``: a logistic-regression sentiment head trained once on fp32 embeddings; each
  contender's test embeddings are then scored with that same head, so the accuracy drop measures
  how far the quantized embeddings moved, not a retraining.
- ``perplexity``: exp(mean next-token NLL) of a causal LM over fixed token windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def fixed_split(labels: list[int], test_fraction: float = 0.3, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, test indices), stratified by label, deterministic for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        perm = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
        n_test = round(len(idx) * test_fraction)
        test += perm[:n_test]
        train += perm[n_test:]
    return sorted(train), sorted(test)


@dataclass
class LogisticHead:
    """Binary logistic regression on standardised features: p(y=1|x) = sigmoid(w.(x-mu)/sd + b)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, steps: int = 200) -> LogisticHead:
        """Full-batch L-BFGS on the mean logistic loss + l2/2 |w|^2 (convex: one optimum).
        Runs with autograd on even when called under ``torch.inference_mode()``."""
        with torch.inference_mode(False), torch.enable_grad():
            x = x.double().clone()  # a normal tensor, not an inference-mode one
            y = y.double().clone()
            mean = x.mean(0)
            std = x.std(0).clamp(min=1e-6)
            z = (x - mean) / std
            w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
            b = torch.zeros((), dtype=torch.float64, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-12,
                                    line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                logits = z @ w + b
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.5 * l2 * w.pow(2).sum()
                loss.backward()
                return loss

            opt.step(closure)
            return cls(mean, std, w.detach(), b.detach())

    @classmethod
    def fit_cv(cls, x: torch.Tensor, y: torch.Tensor, l2_grid: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0),
               folds: int = 5) -> tuple[LogisticHead, float]:
        """Pick l2 by k-fold cross-validation on (x, y) only (never on the test split), then fit on
        all of it. Returns the head and the chosen l2. Folds are deterministic (every k-th row)."""
        n = x.shape[0]
        best, best_acc = l2_grid[0], -1.0
        for l2 in l2_grid:
            accs = []
            for f in range(folds):
                val = torch.arange(f, n, folds)
                fit = torch.tensor([i for i in range(n) if i % folds != f])
                accs.append(cls.fit(x[fit], y[fit], l2=l2).accuracy(x[val], y[val]))
            acc = sum(accs) / len(accs)
            if acc > best_acc + 1e-12:
                best, best_acc = l2, acc
        return cls.fit(x, y, l2=best), best

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.std
        return (z @ self.weight + self.bias > 0).long()

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return (self.predict(x) == y.long()).double().mean().item()


def token_windows(ids: torch.Tensor, length: int, count: int) -> torch.Tensor:
    """The first ``count`` non-overlapping windows of ``length`` tokens of a 1-D id tensor."""
    ids = ids.flatten()
    if ids.numel() < length * count:
        raise ValueError(f"need {length * count} tokens for {count} windows of {length}, have {ids.numel()}")
    return ids[: length * count].view(count, length)


def nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (in fp32/fp64) and the number of predictions."""
    pred = logits[:, :-1].float().flatten(0, 1)
    target = ids[:, 1:].flatten()
    return torch.nn.functional.cross_entropy(pred, target, reduction="sum").double().item(), target.numel()


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count)
