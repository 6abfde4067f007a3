"""Which nn.Module a graph handed to the backend came from (for LKD under ``backend="zeroquant"``).

A backend sees an FX graph and tensors, not the module; LKD needs the module to run it. While a
backend runs, Dynamo is still inside the frame it is converting: its InstructionTranslator
(``current_tx``) holds that frame's locals. The model is among them (``self``, or an argument of
a wrapper such as transformers' deprecation decorator: ``args[0]``). Of the modules found there,
the one owning most of the graph's parameter inputs is the one compiled. Dynamo's translator is
private API: if it moves, ``None`` comes back and the caller raises a clear error instead.
"""

from __future__ import annotations

import torch


def _modules_in(value, depth: int = 0):
    if isinstance(value, torch.nn.Module):
        yield value
    elif depth < 2 and isinstance(value, (tuple, list)):
        for v in value:
            yield from _modules_in(v, depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for v in value.values():
            yield from _modules_in(v, depth + 1)


def traced_module(example_inputs) -> torch.nn.Module | None:
    """The module whose parameters the graph takes as inputs, or None if it cannot be found."""
    params = {id(t) for t in example_inputs if isinstance(t, torch.nn.Parameter)}
    if not params:
        return None
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        scopes = [tx.f_locals]
        root = getattr(getattr(tx, "output", None), "root_tx", None)
        if root is not None and root is not tx:
            scopes.append(root.f_locals)
    except (ImportError, AttributeError):
        return None
    best, best_count = None, 0
    for scope in scopes:
        for value in scope.values():
            for module in _modules_in(value):
                count = sum(id(p) in params for p in module.parameters())
                if count > best_count:
                    best, best_count = module, count
    return best
