"""rewrite_linear: linear-like nodes with a constant weight -> quantized zq ops.

Before (any of these, with W a parameter or buffer, possibly through t/transpose/permute/.T/
contiguous/to(dtype), which are folded at compile time):

    x ──► linear(x, W[N,K], b) ──► y        x ──► matmul(x, W[K,N]) ──► y     (also @, mm)
                                            addmm(b, x, W[K,N]) ──► y          (beta = alpha = 1)
After (w8a8; the scheme's handler in ``zq_compile/schemes`` draws its own part; which scheme a
linear gets, from overrides, module types and its attention/FFN role, is ``schemes/policy.py``'s):

    x ──► zq.quantize_per_token ──► (x_q, x_s) ──► zq.linear_w8a8(x_q, x_s, Wq, Ws, Wz, b) ──► y
                                                          ▲    ▲    ▲
                         new graph inputs, quantized once at compile time (never per call)

Left alone, with the reason recorded: modules matching a ``skip`` glob, weights computed at run
time, non-2-D weights, dtypes other than fp32/bf16/fp16, devices the target does not run on,
1-D activations, addmm with beta/alpha != 1, biases that are not one value per output, K too
large for the int32 accumulator (``max_k_for``).
Returns the number of nodes rewritten.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import operator
import sys
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from tqdm import tqdm

from zq_compile import store
from zq_compile.binding import WeightSource
from zq_compile.calibrate.outliers import Outliers
from zq_compile.calibrate.smooth import transformed_weight
from zq_compile.passes import outlier_term
from zq_compile.passes.graph_utils import fake_value, module_path
from zq_compile.report import LinearDecision
from zq_compile.schemes import handler_for
from zq_compile.schemes.policy import classify, scheme_for

aten = torch.ops.aten

LINEAR = {torch._C._nn.linear, F.linear, aten.linear.default}
MATMUL = {torch.matmul, operator.matmul, torch.mm, aten.mm.default, aten.matmul.default}
ADDMM = {torch.addmm, aten.addmm.default}
MATMUL_METHODS = {"matmul", "mm", "__matmul__"}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Ops that may sit between a parameter and the linear: they are evaluated once on the real tensor.
FOLDABLE_FUNCTIONS = {torch.t, torch.transpose, torch.permute, torch.Tensor.contiguous, torch.Tensor.to,
                      torch.Tensor.detach, torch.detach, aten.t.default, aten.transpose.int,
                      aten.permute.default, aten._to_copy.default, aten.clone.default}
FOLDABLE_METHODS = {"t", "transpose", "permute", "contiguous", "to", "float", "half", "bfloat16",
                    "detach", "clone", "type"}


def read_in_float(node: fx.Node) -> bool:
    """Whether the graph still computes with ``node`` (the weight-folding ops the rewrite left
    behind without users do not count: Inductor drops them)."""
    return any(reads_in_float(user) for user in node.users)


def reads_in_float(user: fx.Node) -> bool:
    """Whether ``user`` of a float weight computes with its values (directly, or through the
    folding ops a rewrite left behind)."""
    foldable = (user.op == "call_function" and user.target in FOLDABLE_FUNCTIONS) or (
        user.op == "call_method" and user.target in FOLDABLE_METHODS)
    return not foldable or read_in_float(user)


@dataclass
class LinearMatch:
    node: fx.Node
    op: str
    x: fx.Node
    weight: fx.Node
    weight_is_nk: bool  # linear takes W[N, K]; matmul / mm / addmm take W[K, N]
    bias: fx.Node | None
    problem: str | None = None  # matched, but in a form we do not rewrite


def _arg(node: fx.Node, pos: int, name: str, default=None):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def match(node: fx.Node) -> LinearMatch | None:
    if node.op == "call_function" and node.target in LINEAR:
        return LinearMatch(node, "linear", _arg(node, 0, "input"), _arg(node, 1, "weight"), True,
                           _arg(node, 2, "bias"))
    if (node.op == "call_function" and node.target in MATMUL) or (
        node.op == "call_method" and node.target in MATMUL_METHODS
    ):
        other = _arg(node, 1, "other") if node.target not in (torch.mm, aten.mm.default, "mm") else _arg(node, 1, "mat2")
        return LinearMatch(node, "matmul", _arg(node, 0, "input"), other, False, None)
    if node.op == "call_function" and node.target in ADDMM:
        m = LinearMatch(node, "addmm", _arg(node, 1, "mat1"), _arg(node, 2, "mat2"), False, _arg(node, 0, "input"))
        if _arg(node, 3, "beta", 1) != 1 or _arg(node, 4, "alpha", 1) != 1:
            m.problem = "addmm with beta or alpha != 1"
        return m
    return None


def constant_value(ctx, node, env: dict | None = None) -> torch.Tensor | None:
    """The real tensor behind ``node`` if it is a compile-time constant, else None.

    ``env`` replaces the values of placeholders: the same chain evaluated on other inputs.
    """
    if not isinstance(node, fx.Node):
        return None
    if node.op == "placeholder":
        if env is not None and node in env:
            return env[node]
        value = ctx.input_value(node)
        return value if _is_param_or_buffer(node, value) else None
    if node.op == "get_attr":
        value = ctx.gm
        for part in node.target.split("."):
            value = getattr(value, part)
        return value if isinstance(value, torch.Tensor) else None
    foldable = (node.op == "call_function" and node.target in FOLDABLE_FUNCTIONS) or (
        node.op == "call_method" and node.target in FOLDABLE_METHODS
    )
    if not foldable:
        return None
    inputs = node.all_input_nodes
    values = {n: constant_value(ctx, n, env) for n in inputs}
    if any(v is None for v in values.values()):
        return None
    args = fx.node.map_arg(node.args, lambda n: values[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
    with torch.no_grad():
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)


def constant_roots(node: fx.Node) -> list[fx.Node]:
    """The placeholders a constant weight expression is computed from."""
    if node.op == "placeholder":
        return [node]
    return [r for n in node.all_input_nodes for r in constant_roots(n)]


class _Slot(int):
    """Where a value of the replayed chain sits in its list of values."""


def replay_chain(ctx, out: fx.Node, roots: list[fx.Node]):
    """The ops from ``roots`` (placeholders) to ``out`` as a plain function of one value per
    root (in ``roots``' order, duplicates included).

    The binding keeps it for as long as the compiled graph lives, to re-quantize a weight that
    changed: referring to the rewritten graph's nodes (or to the pass context) instead kept the
    whole graph, its fake tensors and the first call's inputs alive beside it."""
    slot = {}
    for root in roots:
        slot.setdefault(root, _Slot(len(slot)))
    order = {n: i for i, n in enumerate(out.graph.nodes)}
    needed, todo = set(), [out]
    while todo:
        n = todo.pop()
        if n not in needed and n not in slot:
            needed.add(n)
            todo.extend(n.all_input_nodes)
    steps = []  # (op, target, args, kwargs) with nodes replaced by their slots; get_attr: the value
    for n in sorted(needed, key=order.__getitem__):
        if n.op == "get_attr":
            steps.append(("const", constant_value(ctx, n), (), {}))
        else:
            steps.append((n.op, n.target, fx.node.map_arg(n.args, slot.__getitem__),
                          fx.node.map_arg(n.kwargs, slot.__getitem__)))
        slot[n] = _Slot(len(slot))
    first = {root: roots.index(root) for root in roots}
    positions = [first[r] for r in sorted(first, key=lambda r: slot[r])]
    result = slot[out]

    def run(*values):
        env = [values[i] for i in positions]
        fetch = lambda a: env[a] if type(a) is _Slot else a  # noqa: E731
        with torch.no_grad():
            for op, target, args, kwargs in steps:
                if op == "const":
                    env.append(target)
                    continue
                args = fx.node.map_aggregate(args, fetch)
                kwargs = fx.node.map_aggregate(kwargs, fetch)
                env.append(getattr(args[0], target)(*args[1:], **kwargs) if op == "call_method"
                           else target(*args, **kwargs))
        return env[result]

    return run


def _chain(node) -> str:
    """The ops between a weight's placeholder and the linear, as text (part of its store key)."""
    if node.op == "placeholder":
        return "W"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    args = [_chain(a) if isinstance(a, fx.Node) else repr(a) for a in node.args]
    args += [f"{k}={_chain(v) if isinstance(v, fx.Node) else repr(v)}" for k, v in node.kwargs.items()]
    return f"{target}({', '.join(args)})"


def gemm_qmax(ctx, handler) -> int | None:
    """The narrower weight grid this CPU's int8 GEMMs need to be exact, or None for the full one
    (``codegen/cpu/select.deployed_weight_qmax``: without VNNI, oneDNN's u8s8 GEMM saturates)."""
    if not getattr(handler, "int8_gemm", False):
        return None
    from zq_compile.codegen.cpu.select import deployed_weight_qmax

    return deployed_weight_qmax(ctx.target)


def _store_key(ctx, m: LinearMatch, handler, scheme, groups: int, scale=None, columns=None) -> str | None:
    """Key of this weight's constants in ``zq_compile.store``; None for weights computed from
    several placeholders or kept by the graph itself (get_attr), which are not stored."""
    roots = constant_roots(m.weight)
    if len(roots) != 1:
        return None
    chain = f"{'nk' if m.weight_is_nk else 'kn'}:{_chain(m.weight)}"
    if scale is not None:  # smoothed: W * s is what gets quantized, so s is part of the recipe
        chain += f"*s{hashlib.sha1(scale.float().contiguous().numpy().tobytes()).hexdigest()[:16]}"
    if columns is not None:  # heads' outlier channels: what gets quantized is (W * s) laid out anew
        chain += f"[:,{columns.tag()}]"
    qmax = gemm_qmax(ctx, handler)
    if qmax is not None:  # a narrower grid: constants another CPU class made are not these
        chain += f"|qmax{qmax}"
    return store.recipe(handler.name, scheme, groups, chain)


def _quantized_constants(ctx, m: LinearMatch, w_nk, handler, scheme, groups: int, scale=None, columns=None):
    """(constants, root tensor, store key): kept ones for this weight and recipe if the store has
    them, else quantized now and kept."""
    key = _store_key(ctx, m, handler, scheme, groups, scale, columns)
    root = ctx.input_value(constant_roots(m.weight)[0]) if key is not None else None
    tensors = store.get(root, key) if root is not None else None
    if tensors is None:
        if root is not None and store.is_released(root):
            raise store.ReleasedWeightError(store.missing_message(root))
        w = transformed_weight(w_nk, scale, columns)
        tensors = handler.constant_tensors(handler.quantize(w, scheme, groups, gemm_qmax(ctx, handler)))
        if root is not None:
            store.put(root, key, tensors, ctx.config.to_json())
    return tensors, root, key


def _weight_source(ctx, m: LinearMatch, handler, scheme, groups: int, slots: dict[str, int],
                   scale: torch.Tensor | None = None, columns=None) -> WeightSource | None:
    """How to redo this weight's quantization from other float inputs (None: a get_attr
    constant of the graph itself, which cannot change between calls)."""
    roots = constant_roots(m.weight)
    if not roots:
        return None

    chain, weight_is_nk = replay_chain(ctx, m.weight, roots), m.weight_is_nk

    def make_float(values):
        w = chain(*values)
        w = w if weight_is_nk else w.t()
        return transformed_weight(w, scale, columns)

    qmax = gemm_qmax(ctx, handler)

    def quantize(w_nk):
        return handler.constant_tensors(handler.quantize(w_nk, scheme, groups, qmax))

    return WeightSource(tuple(ctx.input_index(r) for r in roots), make_float, quantize, slots,
                        _store_key(ctx, m, handler, scheme, groups, scale, columns), ctx.config.to_json())


def _mutated_in_graph(node: fx.Node) -> bool:
    for user in node.users:
        name = user.target if isinstance(user.target, str) else getattr(user.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):  # index_copy_, add_, ...
            return True
    return False


def _is_param_or_buffer(node: fx.Node, value) -> bool:
    if isinstance(value, torch.nn.Parameter):
        return True
    source = getattr(node, "_dynamo_source", None) or getattr(node.meta.get("grapharg"), "source", None)
    return source is not None and "._buffers[" in source.name


def _device_problem(ctx, x_val: torch.Tensor) -> str | None:
    if ctx.target == "triton":
        from zq_compile.codegen.triton.runtime import device_problem

        return device_problem(x_val.device)
    if x_val.device.type != "cpu":
        return (f"device {x_val.device.type}: target {ctx.target!r} runs on CPU tensors only "
                "(GPU kernels come with the triton target)")
    return None


def max_k_for(scheme) -> int:
    """Largest K whose int8 x int8 dot product cannot overflow int32: |x_q| <= 2^(a-1) - 1 and
    |w_q| <= 2^(b-1) (asymmetric weights reach -2^(b-1)), so K * that product <= 2^31 - 1
    (132104 for w8a8). Weight-only schemes accumulate in float: no limit."""
    if not scheme.act_bits:
        return sys.maxsize
    return (2**31 - 1) // ((2 ** (scheme.act_bits - 1) - 1) * 2 ** (scheme.weight_bits - 1))


def _decide(ctx, m: LinearMatch, module: str, role: str = "other"):
    """(W[N, K], scheme, groups, reason) if the node is rewritten, else (None, None, None, reason)."""
    w_nk, groups, reason = _check(ctx, m, module)
    if w_nk is None:
        return None, None, None, reason
    n, k = w_nk.shape
    scheme, why = scheme_for(ctx.config, m.node, module, role, n, k)
    limit = max_k_for(scheme)
    if k > limit:
        return None, None, None, (f"K={k} input features could overflow the int32 accumulator "
                                  f"(limit K <= {limit} for {scheme.name}): kept in float")
    groups, reason = groups_for(scheme, n)
    return w_nk, scheme, groups, f"{reason}; {why}"


def groups_for(scheme, n: int) -> tuple[int, str]:
    """The weight groups a scheme gets on N output rows, and how the report words it: the
    scheme's own count where it divides N, else the largest count that does."""
    asked = scheme.weight_groups or n
    if n % asked == 0:
        return asked, f"{scheme.name}, " + ("per-channel" if asked == n else f"{asked} groups")
    used = math.gcd(n, asked)
    return used, f"{scheme.name}, {used} groups (weight_groups={asked} does not divide {n} rows)"


def _check(ctx, m: LinearMatch, module: str):
    """(W[N, K], None, "") if the node may be rewritten, else (None, None, reason)."""
    skip = next((g for g in ctx.config.skip if fnmatch.fnmatchcase(module, g)), None)
    if skip is not None:
        return None, None, f"module matches skip glob {skip!r}"
    if m.problem:
        return None, None, m.problem
    # A weight whose float data was released (release_float_weights) is seen through its fake
    # value: shapes and dtype only; its constants come from zq_compile.store.
    released = isinstance(m.weight, fx.Node) and any(
        store.is_released(v) for v in map(ctx.input_value, constant_roots(m.weight)) if v is not None)
    w = fake_value(m.weight) if released else constant_value(ctx, m.weight)
    if w is None:
        return None, None, "weight is computed at run time (not a parameter or buffer)"
    if any(_mutated_in_graph(r) for r in constant_roots(m.weight)):
        return None, None, "weight is modified in place inside the graph"
    if w.dim() != 2:
        return None, None, f"weight is {w.dim()}-D; only 2-D weights are rewritten"
    x_val = fake_value(m.x)
    if x_val is None:
        return None, None, "no shape metadata on the activation"
    if x_val.dim() < 2 and m.op != "linear":
        return None, None, "1-D activation: a vector-matrix product, not a linear over tokens"
    if x_val.dim() < 1:
        return None, None, "0-D activation"
    for what, dtype in (("activation", x_val.dtype), ("weight", w.dtype)):
        if dtype not in FLOAT_DTYPES:
            return None, None, f"{what} dtype {dtype} unsupported (fp32/bf16/fp16 only)"
    if x_val.dtype != w.dtype:
        return None, None, f"activation {x_val.dtype} and weight {w.dtype} differ"
    problem = _device_problem(ctx, x_val) or (
        _device_problem(ctx, w) if w.device.type != "cpu" else None
    )
    if problem:
        return None, None, problem
    w_nk = w if m.weight_is_nk else w.t()
    n, k = w_nk.shape
    if x_val.shape[-1] != k:
        return None, None, f"activation has {x_val.shape[-1]} features, weight expects {k}"
    b_val = fake_value(m.bias) if isinstance(m.bias, fx.Node) else None
    if m.bias is not None and (b_val is None or tuple(b_val.shape) != (n,)):
        return None, None, f"bias is not one value per output ({None if b_val is None else tuple(b_val.shape)})"
    if not released and not torch.isfinite(w).all():
        return None, None, "weight holds NaN or Inf"
    return w_nk, None, ""


def run(ctx) -> int:
    graph = ctx.gm.graph
    quantized_weights: dict[tuple, list[fx.Node]] = {}
    rewritten = 0
    candidates = [n for n in graph.nodes if match(n) is not None]
    # Before any rewrite: the float graph's data flow (calibrate_linears may have found them).
    roles = ctx.memo.get("roles") or classify(graph, candidates)
    decided = ctx.memo.get("decided", {})
    # Quantizing a large model's weights takes a while: show it, on a terminal only.
    progress = tqdm(total=len(candidates), desc="zeroquant: quantizing weights", unit="linear",
                    disable=len(candidates) < 64 or not sys.stderr.isatty())
    for node in candidates:
        # Matched only now: rewriting an earlier node replaces the producers later ones read.
        m = match(node)
        progress.update()
        module = module_path(node)
        hit = decided.get(node)
        w_nk, scheme, groups, reason = hit if hit is not None else _decide(ctx, m, module, roles[node])
        # The accuracy policy and outlier smoothing (calibrate_linears, smooth_outliers) ran first.
        kept = ctx.memo.get("keep_float", {}).get(node)
        scale = ctx.memo.get("smooth_scale", {}).get(node)
        columns = ctx.memo.get("columns", {}).get(node)
        decision = LinearDecision(node=node.name, module=module, op=m.op,
                                  shape=tuple(w_nk.shape) if w_nk is not None else _float_weight_shape(ctx, m),
                                  scheme=None, reason=kept or reason, role=roles[node])
        ctx.report.decisions.append(decision)
        if (scale is not None or columns is not None) and (w_nk is None or kept):
            raise RuntimeError(f"zeroquant internal error: {node.name} was smoothed but is not quantized")
        if w_nk is not None and kept:  # kept_decode_w8a16 may still quantize it for decode steps
            ctx.memo.setdefault("kept_weights", {})[node] = (w_nk, quantized_weights)
        if w_nk is None or kept:
            continue
        if scale is not None:  # X arrives divided by s: W * s is quantized (_quantized_constants)
            decision.reason += ", smoothed"
        if columns is not None:  # X arrives split or masked: transformed_weight says what is quantized
            decision.reason += f", {columns.describe()}"
        y = quantize_and_emit(ctx, m, w_nk, scheme, groups, decision, quantized_weights, scale, columns)
        ctx.memo.setdefault("decision_of", {})[y] = decision  # the fusion passes name their work here
        if isinstance(columns, Outliers):  # the outlier channels' float product joins the GEMM's output
            outlier_term.emit(ctx, m, y, w_nk, scale, columns, ctx.memo["outlier_x"][node], module)
        rewritten += 1
    progress.close()
    return rewritten


def _float_weight_shape(ctx, m: LinearMatch) -> tuple[int, int] | None:
    """(N, K) of a linear left float whose weight is a parameter or buffer (the report's bytes
    count it); None for a product of two activations."""
    # a placeholder only: evaluating a chain (constant_value folds views) on a released weight raises
    value = constant_value(ctx, m.weight) if isinstance(m.weight, fx.Node) and m.weight.op == "placeholder" else None
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        return None
    n, k = value.shape if m.weight_is_nk else value.shape[::-1]
    return int(n), int(k)


def quantize_and_emit(ctx, m: LinearMatch, w_nk, scheme, groups: int, decision: LinearDecision,
                      quantized_weights: dict, scale=None, columns=None) -> fx.Node:
    """Quantize m's weight (once per weight and recipe: ``quantized_weights`` is the cache of
    this graph), emit the scheme's ops in place of m.node and return their output node."""
    graph = ctx.gm.graph
    handler = handler_for(scheme)
    key = (m.weight, m.weight_is_nk, scheme, None if scale is None else id(scale), id(columns))
    if key not in quantized_weights:  # a weight shared by several nodes is quantized once
        tensors, root, store_key = _quantized_constants(ctx, m, w_nk, handler, scheme, groups, scale, columns)
        prefix = f"{m.node.name}_"
        quantized_weights[key] = []
        slots = {}
        for name, t in tensors.items():
            if t is not None:
                slots[name] = len(ctx.constants)
            quantized_weights[key].append(None if t is None else ctx.add_constant(prefix + name, t))
        if root is not None:  # the backend writes the kernel's form of these back to the store
            ctx.memo.setdefault("stored", []).append((constant_roots(m.weight)[0], root, store_key, slots,
                                                      decision.module))
        source = _weight_source(ctx, m, handler, scheme, groups, slots, scale, columns)
        if source is not None:
            ctx.weight_sources.append(source)
        if _int8_rows(m, w_nk, handler, groups, tensors, columns):
            nodes = dict(zip(tensors, quantized_weights[key]))
            nodes.setdefault("wq", nodes.get("w"))  # the weight-only schemes name it "w"
            ctx.memo.setdefault("int8_rows", {})[m.weight] = {**nodes, "scale": scale, "outliers": columns}
        decision.quant_bytes = sum(t.numel() * t.element_size() for t in tensors.values() if t is not None)
        decision.float_bytes = w_nk.numel() * w_nk.element_size()
    else:
        decision.reason += " (weight shared with an earlier node, quantized once)"
    out_dtype = fake_value(m.x).dtype
    with graph.inserting_before(m.node):
        y = handler.emit(ctx, m.x, quantized_weights[key], m.bias, out_dtype)
    m.node.replace_all_uses_with(y)
    graph.erase_node(m.node)
    decision.scheme = handler.name
    return y


def _int8_rows(m: LinearMatch, w_nk, handler, groups: int, tensors: dict, columns) -> bool:
    """Whether the int8 weight holds the parameter's rows on one symmetric scale per row, W * s
    with outlier columns apart at most: what ``quantize_embedding`` can gather a tied table's
    rows from (w8a8, or w8a16: a head the accuracy policy kept, under release_float_weights).
    Split columns (another layout) are not."""
    return (handler.name in ("w8a8", "w8a16") and isinstance(m.weight, fx.Node) and m.weight.op == "placeholder"
            and m.weight_is_nk and (columns is None or isinstance(columns, Outliers))
            and groups == w_nk.shape[0] and tensors.get("wz") is None)
