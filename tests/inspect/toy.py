"""A small model for the inspect tests: LayerNorm -> Linear -> GeLU -> Linear with a residual,
a graph break between two such blocks, and a head the config skips (a float linear with a reason).
Also a ``module:factory`` for the CLI (``tests.inspect.toy:build``)."""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d=64, hidden=128):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Toy(nn.Module):
    def __init__(self, graph_break=True):
        super().__init__()
        self.block0 = Block()
        self.block1 = Block()
        self.head = nn.Linear(64, 10)
        self.graph_break = graph_break

    def forward(self, x):
        x = self.block0(x)
        if self.graph_break:
            torch._dynamo.graph_break()
        return self.head(self.block1(x))


def build(graph_break=True):
    torch.manual_seed(0)
    return Toy(graph_break).eval(), (torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(1)),)


def broken():
    raise RuntimeError("weights not found")
