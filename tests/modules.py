"""Small modules shared by the tests."""

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    """A pre-norm transformer MLP block: LayerNorm -> Linear -> GeLU -> Linear -> + residual."""

    def __init__(self, d=64, hidden=160):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, hidden)
        self.down = torch.nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class TwoLayers(torch.nn.Module):
    """Two attention calls reading the same bool mask, as a BERT encoder's layers do."""

    def __init__(self, d=32, heads=4, dropout=0.0):
        super().__init__()
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(d, 3 * d) for _ in range(2))
        self.heads, self.dropout = heads, dropout

    def forward(self, x, mask):
        b, length, d = x.shape
        for qkv in self.qkv:
            q, k, v = qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout)
            x = x + o.transpose(1, 2).reshape(b, length, d)
        return x


def attention_inputs(length=20, b=2, d=32):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(b, length, d, generator=g)
    mask = (torch.arange(length)[None, :] < torch.tensor([length, length // 2])[:, None])[:, None, None, :]
    return x, mask.expand(b, 1, length, length)
