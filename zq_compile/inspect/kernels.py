"""Read the code Inductor generated for a graph: which kernels it runs, in which order, and which
buffers each one reads and writes.

Inductor names a fused kernel after the original ops inside it (``cpp_fused_add_gelu_...``,
``triton_poi_fused_...``) and puts a ``Source Nodes`` comment (the graph nodes behind a call) above
every extern call (our GEMMs) and every Triton launch. C++ kernels carry no such comment, so what
they fuse is read from the data flow of the wrapper: a kernel that reads a GEMM's output runs that
GEMM's epilogue, and a kernel whose output a GEMM reads produced that GEMM's int8 input (the
per-token quantize). Kernel parameters say which way data flows (``in_ptr`` read, ``out_ptr``
written, ``in_out_ptr`` both); ``bufA = bufB  # reuse`` and ``reinterpret_tensor`` hand a
buffer's content on under a new name.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_CPP_DEF = re.compile(r"^(\w+) = async_compile\.cpp(?:_pybinding)?\(")
_TRITON_DEF = re.compile(r"^(\w+) = async_compile\.triton\('(\w+)'")
_C_PARAMS = re.compile(r'extern "C"[^(]*\bkernel\(([^)]*)\)', re.S)
_TRITON_PARAMS = re.compile(r"def triton_\w*\(([^)]*)\)")
_SOURCES = re.compile(r"#.*Source Nodes: \[([^\]]*)\](?:, Original ATen: \[([^\]]*)\])?")
_ASSIGN = re.compile(r"^(\w+) = (.+)$")
_CALL = re.compile(r"^([\w.]+)\((.*)\)$")
_NAME = re.compile(r"^(?:buf\d+|arg\d+_\d+|primals_\d+|tangents_\d+)$")
_KERNEL_NAME = re.compile(r"^(?:cpp|triton_[a-z]+)_fused_(.*?)(?:_\d+)?$")
_EMPTY = ("empty_strided", "empty(", "torch.empty")


@dataclass
class Call:
    """One step of the generated ``call``: a fused kernel or an extern (opaque) call."""

    index: int
    name: str
    extern: bool
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    source_nodes: list[str] = field(default_factory=list)
    original_aten: list[str] = field(default_factory=list)
    #: indices of the calls whose output this call reads
    producers: set[int] = field(default_factory=set)

    @property
    def ops(self) -> list[str]:
        if self.extern:
            return [self.name.replace("torch.ops.", "").replace("extern_kernels.", "")]
        return kernel_ops(self.name)


def kernel_ops(name: str) -> list[str]:
    """The original ops a fused kernel's name lists: ``cpp_fused_gelu_linear_w8a8_quantize_per_token_4``
    -> [gelu, linear_w8a8, quantize_per_token]."""
    m = _KERNEL_NAME.match(name)
    if not m:
        return [name]
    text = m.group(1)
    words = _segment(text)
    return list(words) if words else text.split("_")


@functools.cache
def _vocabulary() -> frozenset[str]:
    import torch

    names = {op.split("::", 1)[-1].split(".", 1)[0] for op in torch._C._dispatch_get_all_op_names()}
    return frozenset(n for n in names if n)


def _segment(text: str) -> tuple[str, ...] | None:
    """Split an underscore-joined list of op names into op names (fewest words wins)."""
    vocab = _vocabulary()

    @functools.cache
    def best(i: int) -> tuple[str, ...] | None:
        if i >= len(text):
            return ()
        found = None
        for j in range(len(text), i, -1):
            if j < len(text) and text[j] != "_":
                continue
            word = text[i:j]
            if word in vocab:
                rest = best(j + 1)
                if rest is not None and (found is None or 1 + len(rest) < len(found)):
                    found = (word, *rest)
        return found

    return best(0)


def _kernel_params(code: str) -> dict[str, list[str]]:
    """kernel variable name -> its parameter names, for every C++ and Triton kernel defined."""
    params: dict[str, list[str]] = {}
    lines = code.splitlines()
    for i, line in enumerate(lines):
        m = _CPP_DEF.match(line)
        pattern = _C_PARAMS
        if not m:
            m = _TRITON_DEF.match(line)
            pattern = _TRITON_PARAMS
        if not m:
            continue
        body = "\n".join(lines[i : i + 80])
        p = pattern.search(body)
        if p:
            params[m.group(1)] = [a.strip().split()[-1].lstrip("*") for a in p.group(1).split(",") if a.strip()]
    return params


def _split_args(text: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _call_body(code: str) -> list[str]:
    lines = code.splitlines()
    start = next((i for i, l in enumerate(lines) if re.match(r"\s*def call\(", l)), None)
    if start is None:
        return []
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line.strip())
    return body


def _buffer(arg: str) -> str | None:
    """The buffer an argument passes: ``buf3``, or ``buf3`` in ``reinterpret_tensor(buf3, ...)``."""
    if _NAME.match(arg):
        return arg
    m = re.match(r"^reinterpret_tensor\((\w+),", arg)
    return m.group(1) if m and _NAME.match(m.group(1)) else None


def parse_calls(code: str) -> list[Call]:
    """The generated ``call`` as an ordered list of kernel and extern calls with their data flow."""
    params = _kernel_params(code)
    producer: dict[str, int | None] = {}  # buffer name -> index of the call that wrote its content
    calls: list[Call] = []
    pending: tuple[list[str], list[str]] = ([], [])

    def names(args: list[str]) -> list[str]:
        return [b for b in map(_buffer, args) if b]

    def add(call: Call) -> None:
        nonlocal pending
        call.source_nodes, call.original_aten = pending
        pending = ([], [])
        call.producers = {producer[b] for b in call.reads if producer.get(b) is not None}
        for b in call.writes:
            producer[b] = call.index
        calls.append(call)

    for raw in _call_body(code):
        line = raw.split("  #", 1)[0].strip() if not raw.startswith("#") else raw
        s = _SOURCES.search(raw) if raw.startswith("#") else None
        if s:
            split = lambda t: [x.strip() for x in (t or "").split(",") if x.strip()]  # noqa: E731
            pending = (split(s.group(1)), split(s.group(2)))
            continue
        if not line or line.startswith("#"):
            continue
        for stmt in line.split(";"):
            stmt = stmt.strip()
            if stmt.startswith("del ") or not stmt:
                continue
            a = _ASSIGN.match(stmt)
            target, expr = (a.group(1), a.group(2).strip()) if a else (None, stmt)
            if target and _NAME.match(expr):
                producer[target] = producer.get(expr)  # same content under a new name
                continue
            if target and expr.startswith("reinterpret_tensor("):
                producer[target] = producer.get(_split_args(expr[len("reinterpret_tensor(") : -1])[0])
                continue
            if target and re.match(r"^\w+\[\d+\]$", expr):
                producer[target] = producer.get(expr.split("[")[0])
                continue
            if target and expr.startswith(_EMPTY):
                producer[target] = None
                continue
            c = _CALL.match(expr)
            if not c:
                continue
            func, args = c.group(1), _split_args(c.group(2))
            positional = [x for x in args if not re.match(r"^\w+=", x)]
            outs = [b for x in args if x.startswith("out=") for b in [_buffer(x.split("=", 1)[1].strip())] if b]
            kernel = func[: -len(".run")] if func.endswith(".run") else func
            if kernel in params:
                reads, writes = [], []
                for pname, arg in zip(params[kernel], positional):
                    arg = _buffer(arg)
                    if not arg:
                        continue
                    if "in_ptr" in pname or "in_out_ptr" in pname:
                        reads.append(arg)
                    if "out_ptr" in pname:
                        writes.append(arg)
                add(Call(len(calls), kernel, False, reads, writes))
            elif func.startswith(("torch.ops.", "extern_kernels.")):
                writes = ([target] if target else []) + outs
                reads = [x for x in names(positional) if x not in writes]
                add(Call(len(calls), func, True, reads, writes))
    return calls
