"""Which scheme each linear gets: overrides, module types, and its role found from the graph.

Role rule (what the README states), read from the data flow of the captured graph, never from
module names:
- attention: a linear whose output reaches an attention core's query, key or value through
  ops that are not themselves linears (reshape, transpose, rotary embedding, ...), or that reads
  an attention core's output the same way. An attention core is a
  ``scaled_dot_product_attention`` call, or a matmul of two activations that a softmax is a few
  elementwise steps after (the scores) or before (probabilities times values).
- ffn: around an activation function (GeLU, SiLU, ReLU, tanh, sigmoid, ...) that has a linear
  before it and a linear after it (the same kind of path): the linears whose output reaches it,
  the linears that read its output, and every linear that feeds the same product as the
  activation does (the "up" projection of a gated FFN, found from the down projection). An
  activation with no linear after it (BERT's pooler tanh) makes no FFN.
- other: the rest (LM head, pooler, classifier, ...).
A linear reached both ways is "attention" (INT8 keeps the more sensitive role safe).
``ZeroQuantConfig.roles`` overrides the result by glob over module paths.

Scheme precedence for one linear: ``overrides`` glob (the longest matching glob) >
``module_types`` (innermost module first) > the preset (a mixed preset picks by role).
"""

from __future__ import annotations

import fnmatch
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.config import MIXED_PRESETS, QuantScheme, ZeroQuantConfig
from zq_compile.quant.kgroups import INT4_GROUP_SIZES

aten = torch.ops.aten

SDPA = {F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default}
SOFTMAX = {F.softmax, torch.softmax, aten._softmax.default, aten.softmax.int, torch.Tensor.softmax}
ACTIVATIONS = {F.gelu, F.silu, F.relu, F.mish, F.elu, F.leaky_relu, F.relu6, F.hardswish, F.softplus,
               torch.relu, torch.tanh, torch.sigmoid, torch.nn.functional.tanh, torch.nn.functional.sigmoid,
               aten.gelu.default, aten.silu.default, aten.relu.default, aten.tanh.default,
               aten.sigmoid.default}
ACTIVATION_METHODS = {"relu", "tanh", "sigmoid"}
MATMULS = {torch.matmul, operator.matmul, torch.bmm, aten.bmm.default, aten.matmul.default,
           torch.einsum}
#: How far a softmax may be from the activation-activation matmul it belongs to (scale, mask
#: add, dtype casts, dropout).
SOFTMAX_HOPS = 6


def _is(node: fx.Node, functions: set, methods: set = frozenset()) -> bool:
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def _near(start: fx.Node, want, forward: bool, hops: int) -> bool:
    frontier, seen = [start], set()
    for _ in range(hops):
        nxt = []
        for n in frontier:
            for m in (n.users if forward else n.all_input_nodes):
                if m in seen:
                    continue
                seen.add(m)
                if want(m):
                    return True
                nxt.append(m)
        frontier = nxt
    return False


#: Ops that leave a graph input a graph input (a transposed weight is still a weight).
_VIEWS = {"t", "transpose", "permute", "contiguous", "to", "float", "half", "bfloat16", "detach", "view",
          "reshape", "expand"}


def _weight_like(node: fx.Node) -> bool:
    """A graph input (parameter, buffer) seen through views: not an activation."""
    while node.op in ("call_function", "call_method"):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        inputs = node.all_input_nodes
        if name not in _VIEWS or len(inputs) != 1:
            return False
        node = inputs[0]
    return node.op in ("placeholder", "get_attr")


def _walk(starts, forward: bool, linears: set, stop: set) -> set:
    """Linears reached from ``starts`` through non-linear nodes, not crossing ``stop``."""
    found, seen, todo = set(), set(), list(starts)
    while todo:
        n = todo.pop()
        if n in seen or not isinstance(n, fx.Node):
            continue
        seen.add(n)
        if n in stop or n.op in ("placeholder", "output", "get_attr"):
            continue
        if n in linears:
            found.add(n)
            continue
        todo.extend(n.users if forward else n.all_input_nodes)
    return found


def classify(graph: fx.Graph, linears: list[fx.Node]) -> dict[fx.Node, str]:
    """{linear node: "attention" | "ffn" | "other"} by the rule in the module docstring."""
    linear_set = set(linears)
    cores, core_inputs = [], []
    for n in graph.nodes:
        if _is(n, SDPA, {"scaled_dot_product_attention"}):
            cores.append(n)
            core_inputs.extend(a for a in n.args[:3] if isinstance(a, fx.Node))
        elif _is(n, MATMULS, {"matmul", "bmm", "__matmul__"}) and not any(map(_weight_like, n.all_input_nodes)):
            scores = _near(n, lambda m: _is(m, SOFTMAX, {"softmax"}), forward=True, hops=SOFTMAX_HOPS)
            probs = _near(n, lambda m: _is(m, SOFTMAX, {"softmax"}), forward=False, hops=SOFTMAX_HOPS)
            if scores or probs:
                cores.append(n)
                core_inputs.extend(a for a in n.all_input_nodes)
    acts = [n for n in graph.nodes if _is(n, ACTIVATIONS, ACTIVATION_METHODS)]
    stop = set(cores)
    attention = _walk(core_inputs, False, linear_set, stop) | _walk([u for c in cores for u in c.users], True, linear_set, stop)
    ffn_in, ffn_out = set(), set()
    for act in acts:
        ups = _walk(act.all_input_nodes, False, linear_set, stop)
        downs = _walk(list(act.users), True, linear_set, stop)
        if ups and downs:  # a linear -> activation -> linear chain (a pooler's tanh is not one)
            ffn_in |= ups
            ffn_out |= downs
    # The gated FFN's "up" projection meets the activation only in the product the down
    # projection reads: every linear upstream of a down projection's input is the FFN's.
    ffn_up = _walk([n.args[0] for n in ffn_out if n.args and isinstance(n.args[0], fx.Node)],
                   False, linear_set, stop)
    ffn = ffn_in | ffn_out | ffn_up
    attention |= set(cores) & linear_set  # an activation-activation matmul is attention's own
    return {n: "attention" if n in attention else "ffn" if n in ffn else "other" for n in linears}


def type_names(typ: type) -> tuple[str, str]:
    """(plain, dotted) class name: the two spellings ``module_types`` keys may use."""
    return typ.__name__, f"{typ.__module__}.{typ.__qualname__}"


def _module_types(node: fx.Node) -> list[str]:
    """Class names of the modules ``node`` was called in, innermost first (both the plain and
    the dotted name of each)."""
    names = []
    for _path, typ in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
        if isinstance(typ, type):
            names.append(type_names(typ))
        else:  # some tracers keep a string
            text = str(typ).removeprefix("<class '").removesuffix("'>")
            names.append((text.rsplit(".", 1)[-1], text))
    return names


def role_of(config: ZeroQuantConfig, module: str, found: str) -> tuple[str, str]:
    glob = _longest_match(config.roles, module)
    if glob is not None:
        return dict(config.roles)[glob], f"role {dict(config.roles)[glob]} by roles glob {glob!r}"
    return found, f"{found} (from the graph)"


def _longest_match(pairs, module: str) -> str | None:
    hits = [g for g, _ in pairs if fnmatch.fnmatchcase(module, g)]
    return max(hits, key=lambda g: (len(g), g)) if hits else None


def preset_for(config: ZeroQuantConfig, node: fx.Node | None, module: str,
               types: list[tuple[str, str]] | None = None) -> tuple[str, str]:
    """(preset name, why) for one linear, before its role is applied. ``types``: the class
    names of the modules it sits in, innermost first, when there is no graph node to read
    them from (LKD works on the nn.Module)."""
    glob = _longest_match(config.overrides, module)
    if glob is not None:
        return dict(config.overrides)[glob], f"override glob {glob!r}"
    by_type = dict(config.module_types)
    for short, dotted in (types if types is not None else _module_types(node)):
        for name in (dotted, short):
            if name in by_type:
                return by_type[name], f"module type {name}"
    return config.preset, f"preset {config.preset}"


def scheme_for(config: ZeroQuantConfig, node: fx.Node | None, module: str, role: str,
               n: int, k: int, types: list[tuple[str, str]] | None = None) -> tuple[QuantScheme, str]:
    """The scheme this linear gets and a reason for the report.

    INT4 with groups along K needs K divisible by the group size: the largest valid size that
    divides K is used instead (recorded), and if none does the linear keeps 8-bit weights with
    the same activations (w4a8 -> w8a8, w4a16 -> w8a16), recorded too; never an error.
    """
    preset, why = preset_for(config, node, module, types)
    if preset in MIXED_PRESETS:
        role, role_why = role_of(config, module, role)
        name = MIXED_PRESETS[preset][role]
        why = f"{why}, {role_why} -> {name}"
    else:
        name = preset
    scheme = config.scheme_named(name)
    if scheme.weight_bits != 4:
        return scheme, why
    if k % scheme.group_size == 0:
        return scheme, f"{why}, group_size {scheme.group_size}"
    fits = [g for g in INT4_GROUP_SIZES if k % g == 0]
    if fits:
        near = min(fits, key=lambda g: (abs(g - scheme.group_size), -g))
        return (QuantScheme(**{**scheme.__dict__, "group_size": near}),
                f"{why}, group_size {near} (group_size={scheme.group_size} does not divide K={k})")
    eight = config.scheme_named("w8a8" if scheme.act_bits else "w8a16")
    return eight, (f"{why}, kept 8-bit weights: K={k} is not a multiple of any INT4 group size "
                   f"({', '.join(map(str, INT4_GROUP_SIZES))})")
