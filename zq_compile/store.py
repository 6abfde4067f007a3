"""Quantized constants kept beside the float weight they came from, and freeing that weight.

Every graph the backend compiles puts the quantized constants of each weight it rewrites here,
keyed weakly by the float tensor (the module's Parameter) and by a recipe string saying how they
were made (scheme handler, scheme, groups, and the ops between the parameter and the linear).
A later graph that reads the same weight with the same recipe (a recompile for a new shape, a
decode graph after a prefill one, a model loaded with ``zq_compile.load``) takes them from here
instead of quantizing again, so every graph shares one copy.

``release`` frees a float weight's memory once its constants are here
(``release_float_weights=True``). What stays in the module is the same Parameter object with the
same shape, strides, dtype and device, because torch.compile's guards check exactly those (and
the Python type) on every call: any other stand-in (a tensor subclass, a meta tensor, an
expanded one-element tensor) fails the guards and recompiles every graph. Only its storage is
resized to zero bytes. PyTorch does not check that storage in every op (views raise, but
elementwise reads of such a tensor crash the process), so the owning module gets a forward
pre-hook and a load_state_dict pre-hook that raise ``ReleasedWeightError`` first.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary

OPTION = "release_float_weights=True"


class ReleasedWeightError(RuntimeError):
    """A float weight freed by ``release_float_weights=True`` was needed in floating point."""


@dataclass
class Stored:
    version: tuple[int, int]  # (version counter, data address) of the float tensor when made
    tensors: dict[str, torch.Tensor | None]  # as the scheme handler names them (wq, ws, wz, ...)
    config: str  # JSON of the ZeroQuantConfig that made them (written by zq_compile.save)


_STORE: WeakIdKeyDictionary = WeakIdKeyDictionary()  # float tensor -> {recipe: Stored}
_RELEASED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # float tensor -> its module path
_FLOAT_READERS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensors a compiled graph reads in float
_HOOKED: weakref.WeakSet = weakref.WeakSet()  # modules carrying our hooks


def version(t: torch.Tensor) -> int:
    """``t._version``, or 0 for an inference tensor (which keeps no version counter and can only
    be edited inside ``torch.inference_mode``). Every version check of ours goes through here:
    a model run or compiled under ``inference_mode`` hands us such tensors."""
    # Asked first: reading ``_version`` of an inference tensor raises, and a raised and caught
    # error costs ~10 us, paid twice by every oneDNN GEMM call on weights made under inference_mode.
    if t.is_inference():
        return 0
    try:
        return t._version
    except RuntimeError:  # any other tensor without a version counter
        return 0


def _same(entry_stamp: tuple[int, int], t: torch.Tensor) -> bool:
    """Whether constants stamped (version, data address) still describe ``t``. ``p.data = new``
    keeps the version and changes the address; a released weight's address is gone for good."""
    return entry_stamp[0] == version(t) and (t in _RELEASED or entry_stamp[1] == t.data_ptr())


def recipe(handler: str, scheme: Any, groups: int, chain: str) -> str:
    """The key of one set of constants: everything their values depend on, as stable JSON."""
    import dataclasses

    fields = dataclasses.asdict(scheme) if dataclasses.is_dataclass(scheme) else scheme
    return json.dumps({"handler": handler, "scheme": fields, "groups": groups, "chain": chain},
                      sort_keys=True)


def is_released(t: torch.Tensor) -> bool:
    return t in _RELEASED and t.untyped_storage().nbytes() == 0


def _edited_message(t: torch.Tensor) -> str:
    return (f"the float weight {_RELEASED.get(t, '?')!r} was freed by {OPTION} and has been modified "
            "in place since: its float values are gone, so it cannot be quantized again. Load new "
            f"weights into a fresh model, or compile without {OPTION}")


def get(t: torch.Tensor, key: str) -> dict[str, torch.Tensor | None] | None:
    """The constants kept for ``t`` under ``key``, or None. Constants made from an older version
    of ``t`` are dropped (the weight was edited), unless ``t`` was released: then the edit can
    never be quantized, which is an error."""
    entries = _STORE.get(t)
    entry = entries.get(key) if entries else None
    if entry is None:
        return None
    if not _same(entry.version, t):
        if t in _RELEASED:
            raise ReleasedWeightError(_edited_message(t))
        del entries[key]
        return None
    return entry.tensors


def put(t: torch.Tensor, key: str, tensors: dict[str, torch.Tensor | None], config: str) -> None:
    _STORE.setdefault(t, {})[key] = Stored((version(t), t.data_ptr()), dict(tensors), config)


def set_tensor(t: torch.Tensor, key: str, name: str, value: torch.Tensor) -> None:
    """Replace one kept constant by the form a kernel made of it (e.g. oneDNN's packed handle),
    so the store does not hold a second copy of what the graph holds."""
    entries = _STORE.get(t)
    if entries and key in entries:
        entries[key].tensors[name] = value


def entries(t: torch.Tensor) -> dict[str, Stored]:
    """Every set of constants kept for ``t`` that is still current (for ``zq_compile.save``)."""
    current = {k: e for k, e in (_STORE.get(t) or {}).items() if _same(e.version, t)}
    return current


def missing_message(t: torch.Tensor) -> str:
    return (f"the float weight {_RELEASED.get(t, '?')!r} was freed by {OPTION}, and no quantized "
            "constants were kept for the way this graph uses it (another scheme, grouping or "
            "transpose than the graph that released it): it cannot be quantized again. Compile "
            f"with the same config, or without {OPTION}")


def note_float_reader(t: torch.Tensor) -> None:
    """``t`` is read in floating point by a compiled graph: never release it."""
    _FLOAT_READERS[t] = True


def release_problem(t: torch.Tensor) -> str | None:
    """Why ``t`` must keep its float values, or None."""
    if t in _FLOAT_READERS:
        return "also read in floating point by a compiled graph (e.g. a tied embedding)"
    if t.numel() == 0:
        return "empty"
    return None


def _owns_storage(t: torch.Tensor) -> bool:
    storage = t.untyped_storage()
    if not storage.resizable() or storage.nbytes() != t.numel() * t.element_size() or t.storage_offset():
        return False
    try:  # 2 = the tensor + the storage object above; more: another tensor aliases it
        return torch._C._storage_Use_Count(storage._cdata) <= 2
    except (AttributeError, RuntimeError):
        return False


def release(t: torch.Tensor, path: str, owners=()) -> None:
    """Free ``t``'s memory (see the module docstring). The caller checked ``release_problem``.

    A tensor that shares its storage (a view of a larger buffer, an alias, memory-mapped or
    numpy-owned memory) first gets a fresh storage of its own, so the others keep their values;
    the shared memory goes once nobody else holds it."""
    with torch.no_grad():
        if not _owns_storage(t):
            t.data = torch.empty_like(t)  # same shape and strides; untouched pages cost no RSS
        t.untyped_storage().resize_(0)
    _RELEASED[t] = path
    for owner in owners:
        if owner not in _HOOKED:
            owner.register_forward_pre_hook(_refuse_eager_forward)
            owner.register_load_state_dict_pre_hook(_refuse_load_state_dict)
            _HOOKED.add(owner)


def _released_names(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module._parameters.items() if p is not None and is_released(p)]


def _refuse_eager_forward(module, args):
    # Dynamo traces this hook when it recompiles: there it is a no-op, the graph reads the
    # quantized constants instead.
    if torch.compiler.is_compiling():
        return
    names = _released_names(module)
    if names:
        raise ReleasedWeightError(
            f"{type(module).__name__} (weight {_RELEASED.get(module._parameters[names[0]], '')!r}) was "
            f"called eagerly, but its float {', '.join(names)} was freed by {OPTION} after it was compiled "
            "with the zeroquant backend. Call the compiled model instead, or compile without "
            f"{OPTION} to keep the float weights")


def _refuse_load_state_dict(module, state_dict, prefix, *args):
    names = [n for n in _released_names(module) if prefix + n in state_dict]
    if names:
        raise ReleasedWeightError(
            f"load_state_dict into {', '.join(prefix + n for n in names)}: these float weights were "
            f"freed by {OPTION} and their quantized constants cannot follow new values. Load the "
            "weights into a fresh model and compile that")


def owner_modules(node, value) -> list[torch.nn.Module]:
    """The modules whose ``_parameters`` hold ``value``: the one named by the Dynamo source of
    the placeholder ``node`` (``<module>._parameters['weight']``) evaluated in the frame being
    compiled, and every other module under the frame's root module holding the same tensor (a
    head tied to an embedding: one placeholder, two owners). Empty where the source cannot be
    evaluated (then eager use fails with PyTorch's own error)."""
    source = getattr(node, "_dynamo_source", None) or getattr(node.meta.get("grapharg"), "source", None)
    holder = getattr(source, "base", None)
    name = getattr(source, "index", None)
    if holder is None or getattr(holder, "member", None) != "_parameters" or not isinstance(name, str):
        return []
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        module = _evaluate(holder.base, tx)
        root = _evaluate(_root_source(holder.base), tx)
    except Exception:  # noqa: BLE001  (any failure: no hook, never a failed compile)
        return []
    if not isinstance(module, torch.nn.Module) or module._parameters.get(name) is not value:
        return []
    owners = [module]
    if isinstance(root, torch.nn.Module):
        owners += [m for m in root.modules()
                   if m is not module and any(p is value for p in m._parameters.values())]
    return owners


def _root_source(source):
    while getattr(source, "base", None) is not None:
        source = source.base
    return source


def _evaluate(source, tx):
    if source is None:
        raise LookupError("no source")
    if hasattr(source, "local_name"):
        return tx.f_locals[source.local_name]
    if hasattr(source, "global_name"):
        return tx.f_globals[source.global_name]
    base = _evaluate(getattr(source, "base", None), tx)
    if hasattr(source, "member"):
        return getattr(base, source.member)
    if hasattr(source, "index"):
        if not isinstance(source.index, (str, int)):
            raise LookupError(f"index {source.index!r}")
        return base[source.index]
    return base  # wrappers that only mark what the value is (an nn.Module source, ...)
