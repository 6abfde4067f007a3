"""The static GPU check matrix: which kernel / variant / config is compiled for which target,
and what each build must show. Used by tests/triton/test_static_checks.py (CI, no GPU) and by
bench/triton/static_report.py (the full sweep, recorded as JSON).

A variant fixes the constexprs that change the generated code (weight bits, epilogue features,
dtypes); a config fixes the tile. Argument types mirror a real launch on contiguous tensors: the
JIT specialises strides of 1 to constants and sees aligned pointers and row strides, N and K of
real layers as multiples of 16; M is never specialised (``do_not_specialize``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zq_compile.codegen.triton import aot
from zq_compile.codegen.triton.configs import (DROPPED, KGROUP_SIZES, float_x_fits, gemm_tiles, kgroup_tile, norm_launch,
                                              row_launch)

ARCHS = (80, 90)
DTYPE = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}

#: Epilogues: the unfused backend's scale + bias, and everything at once (the most live registers).
EPILOGUES = {
    "bias": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION="none", HAS_RESIDUAL=False),
    "all": dict(HAS_ZERO=True, HAS_BIAS=True, ACTIVATION="gelu_erf", HAS_RESIDUAL=True),
}
#: What passes/fuse_gemm_epilogue.py emits: each activation, alone or requantized, and the
#: residual add; int8 weights, fp32 output (an fp32 model's; the 16-bit outputs hold fewer
#: live registers). REQUANT is part of the variant.
FUSED_EPILOGUES = {
    **{f"{act}{'-requant' if requant else ''}": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION=act,
                                                     HAS_RESIDUAL=False, REQUANT=requant)
       for act in ("gelu_erf", "gelu_tanh", "silu", "tanh") for requant in (False, True)},
    "residual": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION="none", HAS_RESIDUAL=True, REQUANT=False),
    # requantized for a smoothed next linear: its 1/s multiplies the stored rows
    "gelu_erf-requant-smoothed": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION="gelu_erf", HAS_RESIDUAL=False,
                                      REQUANT=True, HAS_OUT_SCALE=True),
    # SwiGLU's up projection (passes/fuse_swiglu.py): times SiLU(gate), requantized for down
    "swiglu-requant-smoothed": dict(HAS_ZERO=False, HAS_BIAS=False, ACTIVATION="none", HAS_RESIDUAL=False,
                                    REQUANT=True, HAS_OUT_SCALE=True, HAS_GATE=True),
    # the "recompute" plan (runtime.requant_plan): a pass for the row absmax, then one that
    # quantizes in the epilogue (the most live registers: GEMM tile, scales and the quantize)
    "gelu_erf-recompute-absmax": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION="gelu_erf", HAS_RESIDUAL=False,
                                      REQUANT=True, REQUANT_PASS=1),
    "gelu_erf-recompute-quantize": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION="gelu_erf", HAS_RESIDUAL=False,
                                        REQUANT=True, REQUANT_PASS=2, HAS_OUT_SCALE=True),
    # fuse_quantize_prologue: the output projection quantizes its float input (attention's
    # output) in the kernel, then adds the residual
    "quantize_x-residual": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION="none", HAS_RESIDUAL=True,
                                REQUANT=False, QUANTIZE_X=True),
    "swiglu-recompute-quantize": dict(HAS_ZERO=False, HAS_BIAS=False, ACTIVATION="none", HAS_RESIDUAL=False,
                                      REQUANT=True, REQUANT_PASS=2, HAS_OUT_SCALE=True, HAS_GATE=True),
    # fuse_gate_up: gate and up in one kernel (two accumulators; the dual tile table), float
    # product, requantized for a smoothed down projection, and the recompute plan's second pass
    "gate_up": dict(HAS_ZERO=False, HAS_BIAS=False, ACTIVATION="none", HAS_RESIDUAL=False, REQUANT=False,
                    GATE_GEMM=True),
    "gate_up-requant-smoothed": dict(HAS_ZERO=False, HAS_BIAS=False, ACTIVATION="none", HAS_RESIDUAL=False,
                                     REQUANT=True, HAS_OUT_SCALE=True, GATE_GEMM=True),
    "gate_up-recompute-quantize": dict(HAS_ZERO=False, HAS_BIAS=False, ACTIVATION="none", HAS_RESIDUAL=False,
                                       REQUANT=True, REQUANT_PASS=2, HAS_OUT_SCALE=True, GATE_GEMM=True),
    # the same kernel quantizing its float input (fuse_quantize_prologue after fuse_gate_up,
    # where no norm kernel quantizes it): fp32 x and two weight tiles per stage
    "quantize_x-gate_up": dict(HAS_ZERO=False, HAS_BIAS=False, ACTIVATION="none", HAS_RESIDUAL=False,
                               REQUANT=False, QUANTIZE_X=True, GATE_GEMM=True),
}

#: Both GEMMs on INT4 weights with groups along K (W4A16's and W4A8's layout: a block-scaled dot
#: per K step), with the backend's bias or everything the K loop and epilogue can hold at once;
#: built on the tiles the autotuner runs for K groups (``kgroup_tiles``), K_GROUP set per tile.
KGROUP_EPILOGUES = {
    "kgroup-bias": dict(HAS_ZERO=False, HAS_BIAS=True, ACTIVATION="none", HAS_RESIDUAL=False),
    "kgroup-all": dict(HAS_ZERO=True, HAS_BIAS=True, ACTIVATION="gelu_erf", HAS_RESIDUAL=True),
}


#: The fused epilogues on W4A8's K groups (the fusion passes take W4A8 GEMMs too, the gate + up
#: kernel included): the slow full matrix builds them.
KGROUP_FUSED = {f"kgroup+{name}": ep for name, ep in FUSED_EPILOGUES.items()}


def epilogue_of(name: str) -> dict:
    """The constexprs of a variant's epilogue, by its name in one of the tables above."""
    return dict(FUSED_EPILOGUES.get(name) or KGROUP_EPILOGUES.get(name) or KGROUP_FUSED.get(name) or EPILOGUES[name])


def is_kgroup(name: str) -> bool:
    """Whether a variant's epilogue is one of the INT4 K-group ones."""
    return name in KGROUP_EPILOGUES or name in KGROUP_FUSED


def kgroup_tiles(kind: str, tiles) -> list:
    """A GEMM's tiles with BLOCK_K cut for every group size the INT4 presets use, each once,
    less those the static checks found spilling (``DROPPED``, "<kind>_kgroup")."""
    cut = dict.fromkeys(kgroup_tile(t, g) for t in tiles for g in KGROUP_SIZES)
    return [t for t in cut if (f"{kind}_kgroup", t) not in DROPPED]


@dataclass(frozen=True)
class Spec:
    kernel: str  # gemm_a8 | gemm_a16 | quantize | norm_quantize
    variant: str
    config: str
    signature: dict = field(hash=False)
    constexprs: dict = field(hash=False)
    divisible: tuple[str, ...] = ()
    num_warps: int = 4
    num_stages: int = 3
    tile: tuple | None = None
    tensor_cores: str | None = None  # "int8", "fp16", "bf16" or None (no dot)

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.variant}/{self.config}"

    def jit_fn(self):
        from zq_compile.codegen.triton import gemm_a8, gemm_a16, norm_quantize, quantize

        fn = {"gemm_a8": gemm_a8.gemm_a8_kernel, "gemm_a16": gemm_a16.gemm_a16_kernel,
              "quantize": quantize.quantize_per_token_kernel,
              "norm_quantize": norm_quantize.norm_quantize_kernel}[self.kernel]
        from triton.runtime.autotuner import Autotuner

        return fn.fn if isinstance(fn, Autotuner) else fn  # the JITFunction under an Autotuner

    def build(self, arch: int) -> aot.Build:
        return aot.compile_for(self.jit_fn(), arch, self.signature, self.constexprs, self.divisible,
                               self.num_warps, self.num_stages, name=self.id)


def gemm_spec(kind: str, tile, w_bits: int, epilogue: str, act_dtype: str) -> Spec:
    """act_dtype: "int8" for gemm_a8 (whose output is fp16 with the backend's epilogue, bf16
    with all of it and fp32 with a fused one), the activation (and output) dtype for gemm_a16."""
    bm, bn, bk, warps, stages = tile
    fused = epilogue in FUSED_EPILOGUES
    kgroup = is_kgroup(epilogue)
    ep = epilogue_of(epilogue)
    # gemm_a8 on K groups: an fp32 model's W4A8 linear (zq::linear_w4a8's "triton" kernel)
    out = act_dtype if kind == "gemm_a16" else ("fp32" if fused or kgroup else "fp16" if epilogue == "bias" else "bf16")
    sig = {"w_ptr": "*i8" if w_bits == 8 else "*u8", "w_scale_ptr": "*fp32", "w_zero_ptr": "*i32",
           "bias_ptr": DTYPE[out], "res_ptr": DTYPE[out], "out_ptr": DTYPE[out],
           "M": "i32", "N": "i32", "K": "i32", "group_n": "i32",
           "stride_xm": "i32", "stride_wn": "i32", "stride_rm": "i32", "stride_om": "i32",
           # K / group_size scale blocks per row: not assumed divisible (SmolLM2's 576 in groups of 64: 9)
           "stride_sg": "i32"}
    ce = {"stride_xk": 1, "stride_wk": 1, "stride_rn": 1, "stride_on": 1, "M_BUCKET": 0,
          "W_BITS": w_bits, **ep, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}
    if kind == "gemm_a8":
        sig.update(x_ptr="*i8", x_scale_ptr="*fp32", absmax_ptr="*i32", c_ptr=DTYPE[out], gate_ptr=DTYPE[out],
                   q_scale_ptr="*fp32", stride_gm="i32", gw_ptr=sig["w_ptr"], gw_scale_ptr="*fp32",
                   gw_zero_ptr="*i32", gate_bias_ptr=DTYPE[out])
        ce["stride_gn"] = 1
        ce.setdefault("REQUANT", epilogue == "all")
        ce.setdefault("HAS_OUT_SCALE", epilogue == "all")
        ce.setdefault("HAS_GATE", epilogue == "all")
        ce.setdefault("REQUANT_PASS", 0)
        ce.setdefault("QUANTIZE_X", False)
        ce.setdefault("GATE_GEMM", False)
        ce.setdefault("GATE_HAS_BIAS", False)
        if ce["QUANTIZE_X"]:  # x is the float activation, in the output's dtype
            sig["x_ptr"] = DTYPE[out]
        ce["FLOAT"] = out
        if ce["REQUANT_PASS"]:  # out is the int8 rows (written by pass 2); FLOAT the dtype they stand for
            sig.update(out_ptr="*i8", res_ptr="*i8")
        cores = "int8"
    else:
        sig.update(x_ptr=DTYPE[act_dtype])
        ce["DOT_FP32"] = False  # the GPU path (True only works around the interpreter)
        cores = act_dtype
    # a K-group variant runs on a cut tile: its BLOCK_K divides the group (the largest such)
    ce["K_GROUP"] = max(g for g in KGROUP_SIZES if g % bk == 0) if kgroup else 0
    divisible = tuple(a for a in sig if a.endswith("_ptr") or a in ("N", "K")
                      or (a.startswith("stride_") and a != "stride_sg"))
    return Spec(kind, f"w{w_bits}-{epilogue}-{act_dtype}", f"{bm}x{bn}x{bk}-w{warps}-s{stages}", sig, ce,
                divisible, warps, stages, tile, cores)


def gemm_specs(kind: str, tiles=None, full: bool = False) -> list[Spec]:
    """Specs of one GEMM ("a8" / "a16") over ``tiles`` (default: its autotune configs).

    Always: int8 weights with the backend's epilogue and int4 weights with every epilogue feature
    (the unpacking plus the most live registers). ``full`` adds the other two combinations.
    """
    tiles = tiles if tiles is not None else gemm_tiles(kind)
    name = f"gemm_{kind}"
    act = "int8" if kind == "a8" else "bf16"
    variants = [(8, "bias", "fp16" if kind == "a16" else act), (4, "all", act)]
    if full:
        variants += [(8, "all", act), (4, "bias", "fp16" if kind == "a16" else act)]
    if kind == "a8":  # the fused epilogues the backend emits, always: they are what runs
        variants += [(8, ep, act) for ep in FUSED_EPILOGUES]
        variants += [(4, "kgroup-bias", act), (4, "kgroup-all", act)]  # W4A8's K groups
        if full:
            variants += [(4, name, act) for name in KGROUP_FUSED]
    else:  # W4A16's K groups: fp16 with the backend's bias, bf16 with every feature
        variants += [(4, "kgroup-bias", "fp16"), (4, "kgroup-all", "bf16")]
    # a float activation (QUANTIZE_X, fp32 here) runs only the tiles the autotuner keeps for it;
    # the gate + up kernel (GATE_GEMM) only its own table's
    dual_tiles = gemm_tiles("a8_dual") if kind == "a8" else []
    def tiles_of(ep):
        if epilogue_of(ep).get("GATE_GEMM"):
            return kgroup_tiles("a8_dual", dual_tiles) if is_kgroup(ep) else dual_tiles
        return kgroup_tiles(kind, tiles) if is_kgroup(ep) else tiles

    return [gemm_spec(name, t, w, ep, a) for (w, ep, a) in variants for t in tiles_of(ep)
            if not epilogue_of(ep).get("QUANTIZE_X")
            or float_x_fits(t, 4, 1 + epilogue_of(ep).get("GATE_GEMM", False))]


def row_specs(full: bool = False) -> list[Spec]:
    """The per-token quantize and norm + quantize kernels at the launch shapes their heuristics pick."""
    specs = []
    q_widths = (64, 4096) if not full else (64, 256, 768, 4096, 11008)
    for k in q_widths:
        bm, bk, warps = row_launch(k)
        for dtype, has_absmax in ([("fp16", False)] if not full else
                                  [("fp16", False), ("bf16", False), ("fp32", False), ("fp16", True)]):
            sig = {"x_ptr": DTYPE[dtype], "q_ptr": "*i8", "scale_ptr": "*fp32", "absmax_ptr": "*i32",
                   "M": "i32", "K": "i32", "stride_xm": "i32", "stride_qm": "i32"}
            ce = {"stride_xk": 1, "stride_qk": 1, "BLOCK_M": bm, "BLOCK_K": bk, "HAS_ABSMAX": has_absmax, "QMAX": 127}
            specs.append(Spec("quantize", f"{dtype}{'-absmax' if has_absmax else ''}", f"K{k}-{bm}x{bk}-w{warps}",
                              sig, ce, ("x_ptr", "q_ptr", "scale_ptr", "absmax_ptr", "stride_xm", "stride_qm"),
                              warps, 3))
    n_widths = (768, 4096, 8192, 16384) if not full else (64, 768, 1024, 2048, 4096, 5120, 8192, 16384)
    for n in n_widths:
        # (rms, dtype, affine, emit_y): the fusion pass emits LayerNorm with and without its
        # float output (post-norm BERT / pre-norm GPT-2), without affine parameters, and RMSNorm
        for rms, dtype, affine, emit in ([(False, "bf16", True, True), (False, "fp32", True, False),
                                          (False, "fp32", False, True), (True, "fp32", True, False),
                                          (False, "fp32", True, True)] if not full else
                                         [(False, "bf16", True, True), (True, "fp16", True, True),
                                          (False, "fp32", True, True), (False, "fp32", True, False),
                                          (False, "fp32", False, True), (True, "fp32", True, False)]):
            bm, bn, warps = norm_launch(n, rms, emit)
            sig = {"x_ptr": DTYPE[dtype], "w_ptr": DTYPE[dtype], "b_ptr": DTYPE[dtype], "c_ptr": DTYPE[dtype],
                   "y_ptr": DTYPE[dtype], "q_ptr": "*i8", "scale_ptr": "*fp32", "M": "i32", "N": "i32", "eps": "fp32",
                   "stride_xm": "i32", "stride_ym": "i32", "stride_qm": "i32"}
            # smoothing's quantize-only scale rides on the post-norm variant that also writes y
            qscale = not rms and affine and emit and dtype == "fp32"
            ce = {"RMS": rms, "HAS_WEIGHT": affine, "HAS_BIAS": affine and not rms, "HAS_QSCALE": qscale,
                  "EMIT_Y": emit, "QMAX": 127, "BLOCK_M": bm, "BLOCK_N": bn}
            variant = f"{'rms' if rms else 'ln'}-{dtype}" + ("" if affine else "-noaffine") + \
                ("" if emit else "-noemit") + ("-qscale" if qscale else "")
            specs.append(Spec("norm_quantize", variant, f"N{n}-{bm}x{bn}-w{warps}",
                              sig, ce, tuple(a for a in sig if a.endswith("_ptr") or a.startswith("stride") or a == "N"),
                              warps, 1))
    return specs


def all_specs(full: bool = False) -> list[Spec]:
    return gemm_specs("a8", full=full) + gemm_specs("a16", full=full) + row_specs(full)


def problems(spec: Spec, build: aot.Build) -> list[str]:
    """Why this build must not ship (empty when it passes every check)."""
    found = []
    if build.spills:
        found.append(f"register spills: REG {build.regs} STACK {build.stack} LOCAL {build.local}")
    if not build.smem_fits:
        found.append(f"shared memory {build.shared} B > {aot.SMEM_LIMIT[build.arch]} B on sm_{build.arch}")
    ops = build.tensor_core_ops()
    if spec.tensor_cores == "int8":
        if not build.has_int8_tensor_core():
            found.append(f"int8 dot not on tensor cores: {ops}")
        elif build.arch >= 90 and spec.tile[0] >= 64 and spec.num_warps % 4 == 0 and not any(
                o.startswith("wgmma") for o in ops):
            found.append(f"sm_90 tile with >= 64 rows did not use wgmma: {ops}")
    elif spec.tensor_cores in ("fp16", "bf16"):
        want = ".f16" if spec.tensor_cores == "fp16" else ".bf16"
        if not any(want in o for o in ops):
            found.append(f"{spec.tensor_cores} dot not on tensor cores: {ops}")
    if spec.kernel in ("quantize", "norm_quantize"):
        # the numerics of common.py must survive codegen: correctly rounded divisions and the
        # round-half-even constant 1.5 * 2^23 (0f4B400000)
        if "div.rn.f32" not in build.ptx or "div.full.f32" in build.ptx or "div.approx.f32" in build.ptx:
            found.append("scale division is not the correctly rounded div.rn.f32")
        if "0f4B400000" not in build.ptx:
            found.append("the round-half-even constant 0f4B400000 is missing from the PTX")
    return found


def check(spec: Spec, arch: int) -> dict:
    """Compile ``spec`` for sm_<arch> and summarise (a plain dict: it crosses process pools)."""
    build = spec.build(arch)
    return {"kernel": spec.kernel, "variant": spec.variant, "config": spec.config, "arch": arch,
            "tile": list(spec.tile) if spec.tile else None, "num_warps": spec.num_warps,
            "num_stages": spec.num_stages, "regs": build.regs, "stack": build.stack, "local": build.local,
            "shared": build.shared, "tensor_core_ops": build.tensor_core_ops(),
            "problems": problems(spec, build)}


def check_many(jobs: list[tuple[Spec, int]], workers: int | None = None) -> list[dict]:
    """``check`` over (spec, arch) pairs, in parallel processes (compiles are single-threaded)."""
    import concurrent.futures
    import multiprocessing
    import os

    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    if workers == 1:
        return [check(s, a) for s, a in jobs]
    # spawn, not fork: the parent may hold threads (torch, pytest) that a fork would copy mid-state
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(check, *zip(*jobs)))
