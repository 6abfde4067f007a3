"""Small modules shared by the tests."""

import torch


class Block(torch.nn.Module):
    """A pre-norm transformer MLP block: LayerNorm -> Linear -> GeLU -> Linear -> + residual."""

    def __init__(self, d=64, hidden=160):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, hidden)
        self.down = torch.nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))
