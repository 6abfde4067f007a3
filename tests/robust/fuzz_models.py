"""Random small transformer-like models for differential fuzzing (tests/robust/test_fuzz.py).

A ``ModelSpec`` is drawn by hypothesis and shrinks to a readable repro; ``build`` turns it into
a module: an input projection, ``depth`` pre-norm MLP blocks (norm -> up -> activation -> down ->
+ residual) and a head, with the variations the rewrite pass must handle: LayerNorm / RMSNorm /
none, GeLU (erf / tanh) / SiLU / ReLU, bias or not, a head tied to the input projection, a down
projection tied to the transposed up weight, one block called twice, weights used through
``x @ W.t()`` or stored non-contiguous, a head on the last token only, 2-D to 4-D inputs,
fp32 / bf16 / fp16, called under inference mode or with grad enabled. With ``embed`` the input is
token ids: an embedding table feeds the input projection and the head returns logits over the
vocabulary, its weight the table itself (``"tied"``, GPT-2's and SmolLM2's layout: the head the
accuracy policy and ``quantize_embedding`` treat specially) or its own (``"untied"``).
``release`` compiles with ``release_float_weights`` (the float weights freed, tables read as int8
rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hypothesis import strategies as st

# odd and prime ones; 2 and 3 are degenerate rows; 32 and 64 the narrowest inputs INT4's groups along K take
WIDTHS = (2, 3, 5, 7, 8, 13, 16, 17, 31, 32, 64)
ACTS = ("gelu", "gelu_tanh", "silu", "relu")
NORMS = ("layernorm", "rmsnorm", "none")
LAYOUTS = ("linear", "matmul_t", "noncontig")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EMBEDS = ("none", "untied", "tied")
VOCABS = (5, 17, 64)


@dataclass(frozen=True)
class ModelSpec:
    d: int = 8
    hidden: int = 16
    depth: int = 1
    act: str = "gelu"
    norm: str = "layernorm"
    bias: bool = True
    layout: str = "linear"
    tied_head: bool = False
    tied_down: bool = False
    call_twice: bool = False
    last_token: bool = False  # the head reads x[..., -1:, :] (generate()'s logits_to_keep=1)
    lead: tuple[int, ...] = (4,)  # input shape before the feature dim (rank 2 to 4)
    dtype: torch.dtype = torch.float32
    seed: int = 0
    grad: bool = False  # called with grad enabled (compiles with a warning; gradients stop at quantized linears)
    embed: str = "none"  # "none": float input; "untied" / "tied": token ids, an embedding, a vocabulary head
    vocab: int = 17  # the embedding's rows when ``embed`` is not "none"
    release: bool = False  # compiled with release_float_weights=True


@st.composite
def model_specs(draw) -> ModelSpec:
    return ModelSpec(
        d=draw(st.sampled_from(WIDTHS)),
        hidden=draw(st.sampled_from(WIDTHS)),
        depth=draw(st.integers(1, 3)),
        act=draw(st.sampled_from(ACTS)),
        norm=draw(st.sampled_from(NORMS)),
        bias=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        tied_head=draw(st.booleans()),
        tied_down=draw(st.booleans()),
        call_twice=draw(st.booleans()),
        last_token=draw(st.booleans()),
        lead=tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))),
        dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**16)),
        grad=draw(st.booleans()),
        embed=draw(st.sampled_from(EMBEDS)),
        vocab=draw(st.sampled_from(VOCABS)),
        release=draw(st.booleans()),
    )


class RMSNorm(torch.nn.Module):
    """Written out as Llama's is (not nn.RMSNorm), so Dynamo sees the ops a HF model has."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _norm(kind: str, d: int) -> torch.nn.Module:
    if kind == "layernorm":
        return torch.nn.LayerNorm(d)
    if kind == "rmsnorm":
        return RMSNorm(d)
    return torch.nn.Identity()


def _act(kind: str, h):
    if kind == "gelu":
        return F.gelu(h)
    if kind == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if kind == "silu":
        return F.silu(h)
    return F.relu(h)


def _apply(layout: str, lin: torch.nn.Linear, x, weight=None):
    """``lin`` applied to x through the spec's layout; ``weight`` replaces lin.weight (tied)."""
    w = lin.weight if weight is None else weight
    if layout == "matmul_t":
        y = x @ w.t()
        return y + lin.bias if lin.bias is not None else y
    return F.linear(x, w, lin.bias)


class Block(torch.nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.norm = _norm(spec.norm, spec.d)
        self.up = torch.nn.Linear(spec.d, spec.hidden, bias=spec.bias)
        self.down = torch.nn.Linear(spec.hidden, spec.d, bias=spec.bias)

    def forward(self, x):
        s = self.spec
        h = _act(s.act, _apply(s.layout, self.up, self.norm(x)))
        # tied_down: the down projection reuses the up weight, transposed ([d, hidden])
        return x + _apply(s.layout, self.down, h, self.up.weight.t() if s.tied_down else None)


class FuzzModel(torch.nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.emb = torch.nn.Embedding(spec.vocab, spec.d) if spec.embed != "none" else None
        self.inp = torch.nn.Linear(spec.d, spec.d, bias=spec.bias)
        self.blocks = torch.nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = _norm(spec.norm, spec.d)
        if self.emb is not None:  # logits over the vocabulary; HF heads have no bias
            self.head = torch.nn.Linear(spec.d, spec.vocab, bias=False)
            if spec.embed == "tied":
                self.head.weight = self.emb.weight
        else:
            self.head = torch.nn.Linear(spec.d, spec.d, bias=spec.bias)
            if spec.tied_head:
                self.head.weight = self.inp.weight

    def forward(self, x):
        s = self.spec
        if self.emb is not None:
            x = self.emb(x)
        x = _apply(s.layout, self.inp, x)
        for block in self.blocks:
            x = block(x)
        if s.call_twice:
            x = self.blocks[0](x)
        if s.last_token and x.dim() >= 3:
            x = x[..., -1:, :]
        return _apply(s.layout, self.head, self.norm(x))


def build(spec: ModelSpec) -> FuzzModel:
    """The model in ``spec.dtype``, eval mode, weights from ``spec.seed``."""
    torch.manual_seed(spec.seed)
    model = FuzzModel(spec)
    if spec.layout == "noncontig":  # every weight a transposed view of a [K, N] tensor
        for lin in [m for m in model.modules() if isinstance(m, torch.nn.Linear)]:
            if lin.weight.is_contiguous() and not (_tied(spec) and lin is model.head):
                lin.weight = torch.nn.Parameter(lin.weight.detach().t().contiguous().t())
        if spec.embed == "tied":
            model.head.weight = model.emb.weight
        elif _tied(spec):
            model.head.weight = model.inp.weight
    return model.to(spec.dtype).eval()


def _tied(spec: ModelSpec) -> bool:
    """Whether the head shares another module's weight (the table's or the input projection's)."""
    return spec.embed == "tied" or (spec.embed == "none" and spec.tied_head)


def make_input(spec: ModelSpec) -> torch.Tensor:
    """Token ids (int64) when the model has an embedding, else a float tensor in ``spec.dtype``."""
    g = torch.Generator().manual_seed(spec.seed + 1)
    if spec.embed != "none":
        return torch.randint(0, spec.vocab, spec.lead, generator=g)
    return torch.randn(*spec.lead, spec.d, generator=g).to(spec.dtype)
