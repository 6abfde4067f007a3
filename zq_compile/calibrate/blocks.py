"""Finding a model's repeated transformer blocks: the unit LKD trains one at a time.

A block list is an ``nn.ModuleList`` of at least two modules of one class that hold parameters
(BERT ``encoder.layer``, GPT-2 ``transformer.h``, Llama ``model.layers``). Where a model has
several (an encoder-decoder, experts inside each layer), the one holding the most parameters is
taken: that is where the linears are. That the blocks really run, once each and in order, is
checked when their inputs are captured (``lkd.py``), as only a forward pass can tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Blocks:
    path: str  # dotted path of the ModuleList in the model ("" if the model is one)
    modules: list[torch.nn.Module]

    def name(self, i: int) -> str:
        return f"{self.path}.{i}" if self.path else str(i)

    def __len__(self) -> int:
        return len(self.modules)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_block_list(module: torch.nn.Module) -> bool:
    if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
        return False
    kinds = {type(m) for m in module}
    return len(kinds) == 1 and all(_n_params(m) > 0 for m in module)


def find_blocks(model: torch.nn.Module, override: str | None = None) -> Blocks:
    """The model's block list, or the ModuleList at ``override`` (a dotted path).

    Raises ValueError naming ``model`` when there is none, or ``blocks`` for a bad override.
    """
    if override is not None:
        try:
            found = model.get_submodule(override)
        except AttributeError as e:
            raise ValueError(f"blocks={override!r}: no such submodule in {type(model).__name__} ({e})") from None
        if not isinstance(found, (torch.nn.ModuleList, torch.nn.Sequential)) or len(found) < 1:
            raise ValueError(f"blocks={override!r} is a {type(found).__name__}; allowed: a non-empty "
                             "nn.ModuleList or nn.Sequential of blocks")
        if not any(_n_params(m) for m in found):
            raise ValueError(f"blocks={override!r}: its modules hold no parameters to train")
        return Blocks(override, list(found))
    candidates = [(name, m) for name, m in model.named_modules() if _is_block_list(m)]
    if not candidates:
        raise ValueError(
            f"model: no repeated blocks found in {type(model).__name__} (looked for an nn.ModuleList of "
            "two or more modules of one class with parameters); name them with lkd blocks='path.to.list'"
        )
    name, found = max(candidates, key=lambda c: _n_params(c[1]))
    return Blocks(name, list(found))
