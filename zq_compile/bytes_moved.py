"""Bytes moved per forward by one compiled graph: what Inductor's generated kernels read and
write, plus the int8 GEMMs' own bytes from their shapes. On a CPU it is the bytes, more than the
int8 arithmetic, that set the time (AMX above all), so a change that moves fewer bytes is seen
here on any machine, whatever its timings.

Inductor sizes every kernel's reads and writes (``GraphLowering.count_bytes``) but only while
its ``inductor_metrics`` log is on; ``counting_inductor_bytes`` turns it on (silently) for our
compile call alone. A graph Inductor's FX graph cache serves is not code-generated again and is
not counted: the report says so instead of a number.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from zq_compile.passes.graph_utils import size_hint

#: bytes per output element each kernel's GEMM writes, per result dtype of zq.linear_w8a8
_GEMM_OUT_BYTES = {"onednn": {torch.bfloat16: 2}, "int_mm": {}, "reference": {}}


#: Inductor's module-level metrics its count_bytes call adds to while the log is on.
_METRIC_TOTALS = ("nodes_num_elem", "node_runtimes", "num_bytes_accessed")


@contextlib.contextmanager
def counting_inductor_bytes(report):
    from torch._inductor import compile_fx, metrics
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    log = compile_fx.inductor_metrics_log
    saved = (log.level, log.disabled, log.propagate)
    # With the log on, Inductor also appends every scheduler node to these module-level totals
    # and never clears them: each node holds its Scheduler, IR and fake tensors, so left in place
    # they kept ~200 MiB alive per SmolLM2 compile (and grew with every compile in the process).
    totals = {name: getattr(metrics, name) for name in _METRIC_TOTALS}
    counted: list = []
    metrics.nodes_num_elem, metrics.node_runtimes, metrics.num_bytes_accessed = counted, [], 0
    log.setLevel(logging.INFO)
    log.disabled, log.propagate = False, False  # no handler of its own: nothing is printed
    try:
        yield
    finally:
        log.setLevel(saved[0])
        log.disabled, log.propagate = saved[1], saved[2]
        for name, value in totals.items():
            setattr(metrics, name, value)
    if counted:
        # count_bytes records bytes // 4 per scheduler node; extern nodes (the GEMMs, bmm) are
        # counted from their shapes instead (gemm_bytes), so they are left out here.
        report.inductor_bytes = sum(4 * n for node, n in counted
                                    if not isinstance(node, (ExternKernelSchedulerNode, NopKernelSchedulerNode)))
        report.inductor_kernels = sum(1 for node, _ in counted
                                      if not isinstance(node, (ExternKernelSchedulerNode, NopKernelSchedulerNode)))


def gemm_bytes(gm: torch.fx.GraphModule, kernel_name: str) -> int:
    """Bytes the quantized linears' GEMMs read and write at the traced shapes: the 8-bit
    activation, the int8 weight and the output (bf16 from oneDNN when the result is bf16 and the
    weights symmetric, else 4 bytes: fp32 or int32); on target "triton" every Triton GEMM, INT4
    and weight-only ones included. The CPU's W4A8 and weight-only kernels are not counted yet
    (each holds its own form of the weight: an int8 copy, ATen's INT4 layout)."""
    total = 0
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w8a8.default):
        m, k, n = _mkn(node.args[0], node.args[2])
        out = _GEMM_OUT_BYTES.get(kernel_name, {}).get(node.args[6], 4) if node.args[4] is None else 4
        total += m * k + n * k + m * n * out
    total += _fused_triton_gemm_bytes(gm)
    return total


def requant_plan_of(node: torch.fx.Node, m: int, n: int, k: int) -> str:
    """The plan a ``zq.triton_linear_a8_requant`` node runs: the one its ``plan`` keyword forces
    (config ``requant_plan``), else ``runtime.requant_plan``'s choice for its shape."""
    from zq_compile.codegen.triton.runtime import requant_plan

    plan = node.kwargs.get("plan", "auto")
    if plan != "auto":
        return plan
    gate = node.kwargs.get("gate", node.args[11] if len(node.args) > 11 else None)
    out = node.args[7].itemsize
    dual = node.kwargs.get("gate_w_q") is not None  # gate + up in one kernel (fuse_gate_up)
    return requant_plan(m, n, k, out, out if gate is not None else 0, gemms=2 if dual else 1)


def _nbytes(node) -> int:
    """Bytes of a graph tensor as stored (a packed INT4 weight: half a byte per value)."""
    t = node.meta["example_value"]
    return t.numel() * t.element_size()


def _gate_bytes(node: torch.fx.Node, m: int, n: int, out: int) -> int:
    """What a fused GEMM reads for SwiGLU's gate: the gate's weight when it computes the gate
    itself (fuse_gate_up), the stored SiLU(gate) rows when it multiplies by them (fuse_swiglu)."""
    if node.kwargs.get("gate_w_q") is not None:
        return _nbytes(node.kwargs["gate_w_q"])
    return m * n * out if node.kwargs.get("gate") is not None else 0


def _rows_and_k(x_node) -> tuple[int, int]:
    x = x_node.meta["example_value"]
    return math.prod(size_hint(d) for d in x.shape[:-1]), size_hint(x.shape[-1])


def _fused_triton_gemm_bytes(gm: torch.fx.GraphModule) -> int:
    """The Triton GEMMs of target "triton" (the fusion passes' ops, and the W4A8 / weight-only
    linears on their "triton" kernels): activation (int8, or float where the kernel quantizes it
    or takes it as is: ``gemm_a16``) and weight read as stored (packed INT4 at half a byte; both
    weights for gate + up in one kernel, else a stored SwiGLU gate), the residual read, the
    output written in its dtype. A requantizing one writes int8, and by its plan
    (codegen/triton/runtime.requant_plan) either also writes its float rows and reads them back
    ("store") or reads its activation and weight twice ("recompute")."""
    if not hasattr(torch.ops.zq, "triton_linear_a8"):  # not registered: no Triton graph in this process
        return 0
    zq = torch.ops.zq
    total = 0
    for node in gm.graph.find_nodes(op="call_function", target=zq.triton_quantize_linear_a8.default):
        # the float activation read (it is quantized in the kernel), the weight, residual and output
        m, k, n = _mkn(node.args[0], node.args[1])
        out = node.args[6].itemsize
        total += _gemm_io(node.args[0], node.args[1], m, k, n, out, node.args[5]) + _gate_bytes(node, m, n, out)
    for target in (zq.triton_linear_a8.default, zq.triton_linear_a8_requant.default):
        for node in gm.graph.find_nodes(op="call_function", target=target):
            m, k, n = _mkn(node.args[0], node.args[2])
            out = node.args[7].itemsize
            inputs = _gemm_io(node.args[0], node.args[2], m, k, n, 0) + _gate_bytes(node, m, n, out)
            if target is zq.triton_linear_a8.default:
                total += inputs + m * n * out * (1 if node.args[6] is None else 2)
            elif requant_plan_of(node, m, n, k) == "store":
                total += inputs + m * n * (2 * out + 1)
            else:
                total += 2 * inputs + m * n
    for node in gm.graph.find_nodes(op="call_function", target=zq.triton_linear_a16.default):
        m, k, n = _mkn(node.args[0], node.args[1])
        total += _gemm_io(node.args[0], node.args[1], m, k, n, node.args[0].meta["example_value"].element_size(),
                          node.args[5])
    for node in gm.graph.find_nodes(op="call_function", target=zq.linear_w4a8.default):
        if node.args[8] == "triton":  # gemm_a8 on the INT4 weight, nothing fused
            m, k, n = _mkn(node.args[0], node.args[2])
            total += _gemm_io(node.args[0], node.args[2], m, k, n, node.args[9].itemsize)
    for node in gm.graph.find_nodes(op="call_function", target=zq.linear_wo.default):
        if node.args[8] == "triton":  # gemm_a16 (an fp32 model's activation cast to bf16 first)
            m, k, n = _mkn(node.args[0], node.args[1])
            total += _gemm_io(node.args[0], node.args[1], m, k, n, 2, x_bytes=2)
    return total


def _mkn(x_node, w_node) -> tuple[int, int, int]:
    m, k = _rows_and_k(x_node)
    return m, k, w_node.meta["example_value"].shape[0]


def _gemm_io(x_node, w_node, m: int, k: int, n: int, out: int, residual=None, x_bytes: int | None = None) -> int:
    """One GEMM's activation read (as stored, or ``x_bytes`` per value), its weight read as stored,
    its [m, n] output written at ``out`` bytes a value and, when it adds one, the residual read."""
    x_bytes = x_node.meta["example_value"].element_size() if x_bytes is None else x_bytes
    return m * k * x_bytes + _nbytes(w_node) + m * n * out * (1 if residual is None else 2)
