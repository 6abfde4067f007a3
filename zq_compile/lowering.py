"""Lower zq ops for the chosen kernel: the decomposition table handed to Inductor.

A kernel object supplies ``quantize_per_token`` and ``linear`` written in torch ops (the bf16
attention has a single lowering, ``codegen/cpu/attention.py``); AOT autograd traces them in place
of the zq ops, so whatever they leave as aten code Inductor fuses, and whatever they call as an
opaque op (the GEMM) stays one call.

``PostGradPasses`` runs on the post-grad graph (Inductor's ``post_grad_custom_pre_pass``, set in
our compile call only). ``merge_duplicate_casts``: each linear's decomposition traces its own
``x_q + 128 -> uint8`` chain, so Q, K and V reading one quantized activation gave three identical
chains, and Inductor wrote the int8 activation plus three uint8 copies of it. Merged, it writes
one uint8 copy. ``uint8_shift_in_float`` (``passes/uint8_shift_in_float.py``) then computes that
shift in float, without the int8 -> int32 -> uint8 vector conversions. ``erf_without_exp``
(``passes/erf_without_exp.py``) writes erf (exact GeLU's) as a rational function with no exp.
"""

from __future__ import annotations

import functools
import pathlib

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.decomposition import select_decomp_table

from zq_compile.codegen.cpu.attention import attention_bf16
from zq_compile.ops.linear_wo import decompositions as scheme_decompositions

aten, prims = torch.ops.aten, torch.ops.prims


def decompositions_for(kernel) -> dict:
    ours = {
        torch.ops.zq.quantize_per_token.default: kernel.quantize_per_token,
        torch.ops.zq.linear_w8a8.default: kernel.linear,
        torch.ops.zq.attention_bf16.default: attention_bf16,
        **scheme_decompositions(),  # zq::linear_wo, zq::linear_w4a8 (their kernel is an argument)
    }
    key = (type(kernel).__qualname__, kernel.name, tuple(sorted(
        (str(op), f"{fn.__module__}.{fn.__qualname__}") for op, fn in ours.items())), _package_hash())
    return DecompTable({**select_decomp_table(), **ours}, key)


class DecompTable(dict):
    """Inductor's default decompositions plus our lowerings, pickled by a key that names them.

    Inductor's FX graph cache pickles the decomposition table handed to compile_fx into its key.
    A plain dict copy of the default table does not pickle (some entries are pybind11 functions),
    so every zeroquant graph bypassed the cache: each compile code-generated again (SmolLM2: the
    whole Inductor run, and ~120 MiB of Python heap left fragmented after it). By the time the key
    is taken AOT autograd has already traced our lowerings into the graph, which is hashed too;
    the key here only has to tell this table from another: torch's default table (torch's version
    is in Inductor's key), the kernel and the source of this package.
    """

    def __init__(self, table: dict, key: tuple):
        super().__init__(table)
        self.key = key

    def __reduce__(self):
        return (_decomp_table_key, (self.key,))

    # copy and deepcopy go through __reduce__ unless told otherwise: keep them tables
    def __copy__(self):
        return DecompTable(self, self.key)

    def __deepcopy__(self, memo):
        return DecompTable(self, self.key)


def _decomp_table_key(key: tuple) -> tuple:
    """What a pickled DecompTable loads as: only its key (the pickle is for hashing, not loading)."""
    return key


@functools.cache
def _package_hash() -> str:
    root = pathlib.Path(__file__).parent
    return get_hash_for_files(tuple(str(p) for p in sorted(root.rglob("*.py")))).hex()


#: Pure, deterministic ops whose duplicates (same target, same arguments) may be merged: casts,
#: views and the scalar add of the uint8 shift. Nothing random, nothing that mutates. Only
#: integer results are merged: float chains are duplicated on purpose where a value must stay
#: in registers (``quant/activation.py``, ``codegen/cpu/attention.py``), and merging them
#: would make Inductor store it.
MERGEABLE = frozenset({
    prims.convert_element_type.default, aten.view.default, aten._unsafe_view.default,
    aten.reshape.default, aten.add.Tensor, aten.add.Scalar,
})


#: Passes over Inductor's post-grad aten graph, in the order they run; each can be switched off
#: by name (``disable_passes``) like the FX passes of ``zq_compile.passes``.
POST_GRAD_PASSES = ("merge_duplicate_casts", "uint8_shift_in_float", "erf_without_exp")


def merge_duplicate_casts(graph: torch.fx.Graph) -> int:
    """Replace every MERGEABLE node with an integer result by the first node with the same
    target and arguments. Returns the number of nodes merged away."""
    seen: dict[tuple, torch.fx.Node] = {}
    merged = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in MERGEABLE:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.is_floating_point() or val.is_complex():
            continue
        try:
            key = (node.target, _freeze(node.args), _freeze(node.kwargs))
            hash(key)
        except TypeError:  # an unhashable argument (a list of SymInts is fine, a tensor not)
            continue
        first = seen.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            graph.erase_node(node)
            merged += 1
    return merged


class PostGradPasses(CustomGraphPass):
    """Inductor's ``post_grad_custom_pre_pass`` for our compile call: the POST_GRAD_PASSES not in
    ``disabled``, their counts written to ``counts`` (the report's pass_counts). A graph served
    from Inductor's cache does not run them (its counts are then absent)."""

    def __init__(self, disabled=(), counts: dict | None = None):
        self.enabled = tuple(p for p in POST_GRAD_PASSES if p not in disabled)
        self.counts = counts if counts is not None else {}

    def __call__(self, graph: torch.fx.Graph) -> None:
        from zq_compile.passes import erf_without_exp, uint8_shift_in_float

        run = {"merge_duplicate_casts": merge_duplicate_casts, "uint8_shift_in_float": uint8_shift_in_float.run,
               "erf_without_exp": erf_without_exp.run}
        for name in self.enabled:
            self.counts[name] = run[name](graph)

    def uuid(self):
        from zq_compile.passes import erf_without_exp, uint8_shift_in_float

        files = (__file__, uint8_shift_in_float.__file__, erf_without_exp.__file__)
        return (get_hash_for_files(files), self.enabled)


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value
