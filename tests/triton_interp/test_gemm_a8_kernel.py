"""int8-activation GEMM (codegen/triton/gemm_a8.py): W8A8 and W4A8 against the exact reference.

The int32 accumulation is exact, so results may differ from the reference only by the rounding
of the fp32 epilogue and of the output dtype (``EPILOGUE_TOL``).
"""

import pytest
import torch

from tests.triton_interp.helpers import DTYPES, EPILOGUE_TOL, MS, generator, special_rows
from zq_compile.codegen.triton import gemm_a8, quantize
from zq_compile.codegen.triton.configs import A8_DUAL_TILES, A8_TILES, float_x_fits, gemm_tiles, to_config
from zq_compile.codegen.triton.runtime import REQUANT_PLANS, m_bucket, requant_plan
from zq_compile.quant import quantize_per_token_ref, quantize_weight

#: (K, N, weight groups): K not a multiple of any BLOCK_K; odd group counts (3, 5) and per-channel
SHAPES = [(67, 48, 3), (96, 40, 5), (160, 24, None)]


def _problem(m, k, n, groups, w_bits, symmetric, dtype, bias=True, residual=False):
    g = generator(m, k, n, groups, w_bits, symmetric, str(dtype))
    x = torch.randn(m, k, generator=g) * 2
    w = torch.randn(n, k, generator=g) / k**0.5
    qw = quantize_weight(w, bits=w_bits, groups=groups, symmetric=symmetric)
    x_q, x_s = quantize_per_token_ref(x)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    r = torch.randn(m, n, generator=g).to(dtype) if residual else None
    return (x_q, x_s, qw.qdata, qw.scale, qw.zero_point, b, r)


def _compare(args, **kw):
    got = gemm_a8.gemm_a8(*args, **kw)
    kw.pop("config", None)
    want = gemm_a8.reference(*args, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), equal_nan=True, **EPILOGUE_TOL[kw["out_dtype"]])
    return got


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("w_bits", [8, 4])
@pytest.mark.parametrize("k,n,groups", SHAPES)
@pytest.mark.parametrize("m", MS)
def test_matches_reference(m, k, n, groups, w_bits, symmetric, out_dtype):
    _compare(_problem(m, k, n, groups, w_bits, symmetric, out_dtype), out_dtype=out_dtype, w_bits=w_bits)


@pytest.mark.parametrize("activation", ["none", "gelu_erf", "gelu_tanh", "silu", "tanh"])
@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
def test_epilogue_features(activation, residual, bias):
    args = _problem(13, 67, 48, 3, 8, True, torch.float32, bias=bias, residual=residual)
    _compare(args, out_dtype=torch.float32, activation=activation)


@pytest.mark.parametrize("plan", REQUANT_PLANS)
@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("w_bits", [8, 4])
def test_requantized_output_is_the_quantize_of_the_float_output(w_bits, out_dtype, plan):
    args = _problem(67, 67, 48, 3, w_bits, False, out_dtype, residual=True)
    kw = dict(out_dtype=out_dtype, w_bits=w_bits, activation="gelu_tanh")
    q, s = gemm_a8.gemm_a8(*args, requant=True, plan=plan, **kw)
    # exact against the same kernel's float output ...
    own_q, own_s = quantize_per_token_ref(gemm_a8.gemm_a8(*args, **kw))
    assert torch.equal(q, own_q) and torch.equal(s, own_s)
    # ... and within one step of the reference (the float outputs differ by rounding only)
    ref_q, ref_s = gemm_a8.reference(*args, requant=True, **kw)
    torch.testing.assert_close(s, ref_s, **EPILOGUE_TOL[out_dtype])
    assert (q.int() - ref_q.int()).abs().max() <= 1


@pytest.mark.parametrize("plan", REQUANT_PLANS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_out_scale_scales_the_requantized_rows(out_dtype, plan):
    """A smoothed next linear's 1/s (passes/fuse_gemm_epilogue.py): q and scale are the quantize
    of the float output times out_scale, rounded to the output dtype as the graph's multiply was.
    (bf16 is left out: the interpreter's fp32 -> bf16 conversion need not round as torch's.)"""
    args = _problem(67, 67, 48, 3, 8, True, out_dtype, residual=True)
    c = (torch.rand(48, generator=generator("c", str(out_dtype))) * 4 + 0.1).to(out_dtype)
    kw = dict(out_dtype=out_dtype, activation="gelu_erf")
    q, s = gemm_a8.gemm_a8(*args, requant=True, out_scale=c, plan=plan, **kw)
    y = gemm_a8.gemm_a8(*args, **kw)
    own_q, own_s = quantize_per_token_ref((y.float() * c.float()).to(out_dtype))
    assert torch.equal(q, own_q) and torch.equal(s, own_s)
    ref_q, _ = gemm_a8.reference(*args, requant=True, out_scale=c, **kw)
    assert (q.int() - ref_q.int()).abs().max() <= 1


@pytest.mark.parametrize("requant", [None, *REQUANT_PLANS], ids=["float", *REQUANT_PLANS])
def test_gate_multiplies_after_the_activation(requant):
    """SwiGLU's up projection (passes/fuse_swiglu.py): y * gate, then requantized if asked."""
    args = _problem(13, 67, 48, 3, 8, True, torch.float32)
    gate = torch.randn(13, 48, generator=generator("gate"))
    kw = dict(out_dtype=torch.float32, gate=gate)
    if requant:
        q, s = gemm_a8.gemm_a8(*args, requant=True, plan=requant, **kw)
        own_q, own_s = quantize_per_token_ref(gemm_a8.gemm_a8(*args, **kw))
        assert torch.equal(q, own_q) and torch.equal(s, own_s)
    else:
        _compare(args, **kw)
        plain = gemm_a8.gemm_a8(*args, out_dtype=torch.float32)
        torch.testing.assert_close(gemm_a8.gemm_a8(*args, **kw), plain * gate, rtol=1e-6, atol=1e-6)


def _gate_up(m, w_bits, symmetric, dtype, gate_bias=True, k=67):
    """(x_q, x_s, up weight, gate_weight) for one SwiGLU GEMM pair on one quantized x."""
    args = _problem(m, k, 48, 3, w_bits, symmetric, dtype, bias=False)
    g = generator("gate-weight", m, w_bits, symmetric, str(dtype), k)
    qg = quantize_weight(torch.randn(48, k, generator=g) / k**0.5, bits=w_bits, groups=3, symmetric=symmetric)
    bias = torch.randn(48, generator=g).to(dtype) if gate_bias else None
    return args[:5], (qg.qdata, qg.scale, qg.zero_point, bias)


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("w_bits", [8, 4])
@pytest.mark.parametrize("m", MS)
def test_gate_gemm_in_the_same_kernel_is_the_two_launch_fold(m, w_bits, symmetric, out_dtype):
    """gate_weight (GATE_GEMM, passes/fuse_gate_up.py): x read once, two accumulators; the
    product equals the gate GEMM's stored SiLU output times the up GEMM's, bit for bit, float
    or requantized by either plan, and the reference within the epilogue's rounding."""
    (x_q, x_s, w_q, w_s, w_z), gw = _gate_up(m, w_bits, symmetric, out_dtype)
    kw = dict(out_dtype=out_dtype, w_bits=w_bits)
    gate = gemm_a8.gemm_a8(x_q, x_s, *gw, activation="silu", **kw)
    got = gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate_weight=gw, **kw)
    assert torch.equal(got, gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate=gate, **kw))
    want = gemm_a8.reference(x_q, x_s, w_q, w_s, w_z, gate_weight=gw, **kw)
    # two roundings to the output format (the gate, then the product): twice the one-GEMM tolerance
    tol = {name: 2 * value for name, value in EPILOGUE_TOL[out_dtype].items()}
    torch.testing.assert_close(got.float(), want.float(), **tol)
    for plan in REQUANT_PLANS:
        q, s = gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate_weight=gw, requant=True, plan=plan, **kw)
        own_q, own_s = quantize_per_token_ref(got)
        assert torch.equal(q, own_q) and torch.equal(s, own_s), plan


@pytest.mark.parametrize("tile", gemm_tiles("a8_dual"), ids=lambda t: "x".join(map(str, t)))
def test_every_dual_config_computes_the_two_launch_fold(tile):
    """Each config of the dual table (no autotuner): rows, columns and K masked, two column
    tiles, int4 weights with zero points (both accumulators, one row sum)."""
    m = 67 if tile[0] <= 64 else 131
    n = 5 * (tile[1] // 5 + 3)
    k = 67 + tile[2]
    g = generator("dual-tile", tile)
    x_q, x_s = quantize_per_token_ref(torch.randn(m, k, generator=g))
    qu, qg = (quantize_weight(torch.randn(n, k, generator=g) / 8, bits=4, groups=5, symmetric=False) for _ in "ug")
    gw = (qg.qdata, qg.scale, qg.zero_point, torch.randn(n, generator=g))
    kw = dict(out_dtype=torch.float32, w_bits=4, config=to_config(tile))
    got = gemm_a8.gemm_a8(x_q, x_s, qu.qdata, qu.scale, qu.zero_point, gate_weight=gw, **kw)
    gate = gemm_a8.gemm_a8(x_q, x_s, *gw, activation="silu", **kw)
    assert torch.equal(got, gemm_a8.gemm_a8(x_q, x_s, qu.qdata, qu.scale, qu.zero_point, gate=gate, **kw))
    q, s = gemm_a8.gemm_a8(x_q, x_s, qu.qdata, qu.scale, qu.zero_point, gate_weight=gw, requant=True,
                           plan="recompute", **kw)
    assert torch.equal(q, quantize_per_token_ref(got)[0]) and torch.equal(s, quantize_per_token_ref(got)[1])


def test_dual_calls_tune_from_the_dual_table():
    """GATE_GEMM is part of the autotune key: a dual call does not reuse the plain GEMM's tile."""
    kernel = gemm_a8.gemm_a8_kernel
    kernel.cache.clear()
    (x_q, x_s, w_q, w_s, w_z), gw = _gate_up(200, 8, True, torch.float16, k=64)
    gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, out_dtype=torch.float16)
    gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate_weight=gw, out_dtype=torch.float16)
    tiles = {key[:2]: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for key, c in kernel.cache.items()}
    assert tiles == {(2, False): A8_TILES[2][0][:2], (2, True): A8_DUAL_TILES[2][0][:2]}


@pytest.mark.parametrize("change, match", [
    (dict(gate=torch.ones(13, 48)), "exclude each other"),
    (dict(g_q=torch.zeros(48, 66, dtype=torch.int8)), "must match the up weight"),
    (dict(g_s=torch.ones(4)), "the up weight's groups"),
    (dict(g_z=torch.zeros(3, dtype=torch.int32)), "zero points"),
    (dict(g_b=torch.ones(5)), "gate bias"),
])
def test_bad_gate_weights_raise(change, match):
    (x_q, x_s, w_q, w_s, w_z), (g_q, g_s, g_z, g_b) = _gate_up(13, 8, True, torch.float32)
    a = dict(g_q=g_q, g_s=g_s, g_z=g_z, g_b=g_b, gate=None)
    a.update(change)
    with pytest.raises(ValueError, match=match):
        gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, out_dtype=torch.float32, gate=a["gate"],
                        gate_weight=(a["g_q"], a["g_s"], a["g_z"], a["g_b"]))


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_recomputed_requant_on_zero_nan_and_inf_rows(out_dtype):
    """The recompute plan quantizes in the GEMM's second pass from the first pass's absmax: the
    same q and scale as quantizing the float rows, for an all-zero output row (scale 1), a row
    with a NaN (NaN scale, q 0) and one with an Inf (Inf scale)."""
    g = generator("special", str(out_dtype))
    x = special_rows(torch.randn(5, 67, generator=g))
    qw = quantize_weight(torch.randn(48, 67, generator=g) / 8, groups=3)
    x_q, x_s = quantize_per_token_ref(x)
    res = torch.zeros(5, 48, dtype=out_dtype)
    res[3, 7] = float("inf")
    args = (x_q, x_s, qw.qdata, qw.scale, None, None, res)
    q, s = gemm_a8.gemm_a8(*args, out_dtype=out_dtype, requant=True, plan="recompute")
    own_q, own_s = quantize_per_token_ref(gemm_a8.gemm_a8(*args, out_dtype=out_dtype))
    assert torch.equal(q, own_q)
    torch.testing.assert_close(s, own_s, rtol=0, atol=0, equal_nan=True)
    assert s[0].item() == 1.0 and (q[0] == 0).all()
    assert s[2].isnan().item() and (q[2] == 0).all()
    assert s[3].isinf().item()


def test_requant_plan_follows_the_bytes():
    """Recompute where a second int8 GEMM costs less than the float rows' write and read
    (runtime.INT8_OPS_PER_BYTE), never for small M, and an unknown plan is refused."""
    assert requant_plan(4096, 1536, 384, 4) == "recompute"  # MiniLM FFN1, fp32 and fp16 rows
    assert requant_plan(4096, 1536, 384, 2) == "recompute"
    assert requant_plan(1024, 3072, 768, 4) == "recompute" and requant_plan(1024, 3072, 768, 2) == "store"
    assert requant_plan(256, 1536, 576, 2, gate_bytes=2) == "store"  # SmolLM2's up, fp16 gate
    assert requant_plan(2048, 11008, 4096, 2) == "store"  # Llama-7B: the GEMM costs more than the rows
    assert requant_plan(64, 1536, 384, 4) == "store"  # bucket 1: the weight read twice
    # gate and up in one kernel recompute both GEMMs: SmolLM2's fp16 rows are not worth 4K ops
    assert requant_plan(256, 1536, 576, 2, gemms=2) == "store" and requant_plan(256, 1536, 576, 4, gemms=2) == "store"
    assert requant_plan(4096, 1536, 384, 4, gemms=2) == "recompute"  # 4 * 384 <= 256 * 8
    args = _problem(13, 67, 48, 3, 8, True, torch.float32)
    with pytest.raises(ValueError, match="plan='fused'"):
        gemm_a8.gemm_a8(*args, out_dtype=torch.float32, requant=True, plan="fused")


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("m", MS)
def test_quantizing_prologue_is_quantize_then_gemm(m, out_dtype):
    """x_scale=None: the kernel quantizes its float input per token (fuse_quantize_prologue),
    bit for bit as the quantize kernel followed by the GEMM, all-zero and NaN rows included."""
    g = generator("prologue", m, str(out_dtype))
    x = special_rows(torch.randn(m, 67, generator=g) * 3).to(out_dtype)
    qw = quantize_weight(torch.randn(48, 67, generator=g) / 8, groups=3)
    r = torch.randn(m, 48, generator=g).to(out_dtype)
    kw = dict(out_dtype=out_dtype, activation="gelu_erf")
    got = gemm_a8.gemm_a8(x, None, qw.qdata, qw.scale, None, None, r, **kw)
    x_q, x_s = quantize.quantize_per_token(x)
    want = gemm_a8.gemm_a8(x_q, x_s, qw.qdata, qw.scale, None, None, r, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    ref = gemm_a8.reference(x, None, qw.qdata, qw.scale, None, None, r, **kw)
    torch.testing.assert_close(got.float(), ref.float(), equal_nan=True, **EPILOGUE_TOL[out_dtype])


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_quantizing_prologue_with_the_gate_gemm_is_quantize_then_dual(out_dtype):
    """QUANTIZE_X and GATE_GEMM together (fuse_quantize_prologue after fuse_gate_up): one float
    read of x for both dots, bit for bit the quantize kernel followed by the dual GEMM."""
    g = generator("prologue-dual", str(out_dtype))
    x = special_rows(torch.randn(67, 67, generator=g) * 3).to(out_dtype)
    qu, qg = (quantize_weight(torch.randn(48, 67, generator=g) / 8, groups=3) for _ in "ug")
    gw = (qg.qdata, qg.scale, None, torch.randn(48, generator=g).to(out_dtype))
    got = gemm_a8.gemm_a8(x, None, qu.qdata, qu.scale, gate_weight=gw, out_dtype=out_dtype)
    x_q, x_s = quantize.quantize_per_token(x)
    want = gemm_a8.gemm_a8(x_q, x_s, qu.qdata, qu.scale, gate_weight=gw, out_dtype=out_dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_quantizing_prologue_wants_a_float_input():
    x_q, _, w_q, w_s, *_ = _problem(13, 67, 48, 3, 8, True, torch.float32)
    with pytest.raises(ValueError, match="x_scale=None"):
        gemm_a8.gemm_a8(x_q, None, w_q, w_s, out_dtype=torch.float32)


def test_out_scale_needs_requant():
    args = _problem(13, 67, 48, 3, 8, True, torch.float32)
    with pytest.raises(ValueError, match="requant"):
        gemm_a8.gemm_a8(*args, out_dtype=torch.float32, out_scale=torch.ones(48))


def test_zero_and_nan_activation_rows():
    g = generator("rows")
    x = special_rows(torch.randn(5, 67, generator=g))
    qw = quantize_weight(torch.randn(48, 67, generator=g), groups=3)
    x_q, x_s = quantize_per_token_ref(x)
    y = gemm_a8.gemm_a8(x_q, x_s, qw.qdata, qw.scale, out_dtype=torch.float32)
    assert (y[0] == 0).all()  # all-zero row: scale 1, q 0
    assert torch.isnan(y[2]).all()  # NaN row: NaN scale propagates
    assert torch.isfinite(y[[1, 3, 4]]).all()


def test_leading_rows_and_strided_inputs():
    args = list(_problem(67, 67, 48, 3, 8, True, torch.float16, residual=True))
    args[0] = torch.cat([args[0], args[0]], dim=1)[:, :67]  # x_q with row stride 134
    args[6] = args[6].t().contiguous().t()  # column-major residual
    _compare(tuple(args), out_dtype=torch.float16)


@pytest.mark.parametrize("tile", gemm_tiles("a8"), ids=lambda t: "x".join(map(str, t)))
def test_every_autotune_config_computes_the_same(tile):
    """Each config runs (no autotuner) on a problem that masks rows, columns and K."""
    m = 67 if tile[0] <= 64 else 131
    n = 5 * (tile[1] // 5 + 3)  # two column tiles, the second partly masked; 5 weight groups
    args = _problem(m, 67 + tile[2], n, 5, 4, False, torch.float32, residual=True)
    _compare(args, out_dtype=torch.float32, w_bits=4, activation="silu", config=to_config(tile))


@pytest.mark.parametrize("tile", gemm_tiles("a8"), ids=lambda t: "x".join(map(str, t)))
def test_every_autotune_config_recomputes_the_stored_plan(tile):
    """Recompute against store under each config, bit for bit: rows and columns masked, two
    column tiles (one of them writes the scales)."""
    m = 67 if tile[0] <= 64 else 131
    n = 5 * (tile[1] // 5 + 3)
    args = _problem(m, 67 + tile[2], n, 5, 8, True, torch.float16)
    kw = dict(out_dtype=torch.float16, activation="gelu_erf", requant=True, config=to_config(tile))
    q, s = gemm_a8.gemm_a8(*args, plan="recompute", **kw)
    want_q, want_s = gemm_a8.gemm_a8(*args, plan="store", **kw)
    assert torch.equal(q, want_q) and torch.equal(s, want_s)


@pytest.mark.parametrize("tile", [t for t in gemm_tiles("a8") if float_x_fits(t, 4)],
                         ids=lambda t: "x".join(map(str, t)))
def test_every_float_input_config_quantizes_as_the_quantize_kernel(tile):
    m = 67 if tile[0] <= 64 else 131
    n = 5 * (tile[1] // 5 + 3)
    k = 67 + tile[2]  # two K steps, the second masked: the absmax pass sees both
    g = generator("prologue-tile", tile)
    x = torch.randn(m, k, generator=g)
    qw = quantize_weight(torch.randn(n, k, generator=g), groups=5)
    got = gemm_a8.gemm_a8(x, None, qw.qdata, qw.scale, out_dtype=torch.float32, config=to_config(tile))
    x_q, x_s = quantize.quantize_per_token(x)
    want = gemm_a8.gemm_a8(x_q, x_s, qw.qdata, qw.scale, out_dtype=torch.float32, config=to_config(tile))
    assert torch.equal(got, want)


def test_autotuner_keys_on_the_m_bucket_not_m():
    """New token counts in a bucket reuse its tuned config: one cache entry per bucket."""
    kernel = gemm_a8.gemm_a8_kernel
    kernel.cache.clear()
    for m in (1, 5, 13, 16, 17, 40, 64, 67, 200):
        args = _problem(m, 64, 32, None, 8, True, torch.float16)
        gemm_a8.gemm_a8(*args, out_dtype=torch.float16)
    assert len(kernel.cache) == len({m_bucket(m) for m in (1, 5, 13, 16, 17, 40, 64, 67, 200)}) == 3
    for key, config in kernel.cache.items():
        bucket = key[0]
        assert (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]) == A8_TILES[bucket][0][:2]


@pytest.mark.parametrize("change, match", [
    (dict(x_q=torch.zeros(2, 32)), "int8"),
    (dict(x_s=torch.ones(3, 1)), "one value per row"),
    (dict(w_s=torch.ones(3)), "dividing"),
    (dict(bias=torch.ones(5)), "bias"),
    (dict(w_bits=4), "uint8"),
])
def test_bad_arguments_raise(change, match):
    x_q, x_s = quantize_per_token_ref(torch.randn(2, 32))
    qw = quantize_weight(torch.randn(16, 32))
    a = dict(x_q=x_q, x_s=x_s, w_q=qw.qdata, w_s=qw.scale, bias=None, w_bits=8)
    a.update(change)
    with pytest.raises(ValueError, match=match):
        gemm_a8.gemm_a8(a["x_q"], a["x_s"], a["w_q"], a["w_s"], None, a["bias"], out_dtype=torch.float32,
                        w_bits=a["w_bits"])


# -- INT4 with groups along K (W4A8's layout, quant/kgroups.py) -------------------------------

#: (K, N, group_size, row groups): groups smaller and larger than the tiles' BLOCK_K, row groups
KGROUP_SHAPES = [(96, 48, 32, None), (160, 40, 32, 5), (256, 24, 128, 2), (192, 16, 64, None)]


def _kgroup_problem(m, k, n, group_size, row_groups, symmetric, dtype, bias=True, residual=False):
    from zq_compile.quant.kgroups import quantize_kgroups

    g = generator("kgroup", m, k, n, group_size, row_groups, symmetric, str(dtype))
    x = torch.randn(m, k, generator=g) * 2
    # blocks of different ranges, so a scale applied to the wrong block shows
    w = torch.randn(n, k, generator=g) * torch.linspace(0.2, 3.0, k // group_size).repeat_interleave(group_size)
    qw = quantize_kgroups(w / k**0.5, group_size=group_size, row_groups=row_groups, symmetric=symmetric)
    x_q, x_s = quantize_per_token_ref(x)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    r = torch.randn(m, n, generator=g).to(dtype) if residual else None
    return (x_q, x_s, qw.qdata, qw.scale, qw.zero_point, b, r)


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("k,n,group_size,row_groups", KGROUP_SHAPES)
@pytest.mark.parametrize("m", MS)
def test_kgroups_match_reference(m, k, n, group_size, row_groups, symmetric, out_dtype):
    args = _kgroup_problem(m, k, n, group_size, row_groups, symmetric, out_dtype)
    _compare(args, out_dtype=out_dtype, w_bits=4)


def test_kgroups_use_each_blocks_scale():
    """One block's scale set to 0 must remove exactly that block's contribution."""
    x_q, x_s, w_q, w_s, w_z, _, _ = _kgroup_problem(4, 96, 16, 32, None, True, torch.float32, bias=False)
    w_s = w_s.clone()
    w_s[:, 1] = 0
    got = gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, out_dtype=torch.float32, w_bits=4)
    x_cut = x_q.clone()
    x_cut[:, 32:64] = 0
    want = gemm_a8.reference(x_cut, x_s, w_q, w_s, w_z, out_dtype=torch.float32, w_bits=4)
    torch.testing.assert_close(got, want, **EPILOGUE_TOL[torch.float32])


@pytest.mark.parametrize("plan", REQUANT_PLANS)
def test_kgroups_requantize_and_fuse_the_epilogue(plan):
    args = _kgroup_problem(13, 96, 48, 32, 3, False, torch.float16, residual=True)
    q, s = gemm_a8.gemm_a8(*args, out_dtype=torch.float16, w_bits=4, activation="gelu_erf", requant=True, plan=plan)
    want_q, want_s = gemm_a8.reference(*args, out_dtype=torch.float16, w_bits=4, activation="gelu_erf", requant=True)
    torch.testing.assert_close(s, want_s, rtol=2e-3, atol=0)
    assert (q.int() - want_q.int()).abs().max() <= 1


def test_kgroups_quantizing_prologue():
    x_q, x_s, w_q, w_s, w_z, b, _ = _kgroup_problem(13, 160, 40, 32, 5, False, torch.float32)
    x = (x_q.float() * x_s)
    got = gemm_a8.gemm_a8(x, None, w_q, w_s, w_z, b, out_dtype=torch.float32, w_bits=4)
    want = gemm_a8.reference(x, None, w_q, w_s, w_z, b, out_dtype=torch.float32, w_bits=4)
    torch.testing.assert_close(got, want, **EPILOGUE_TOL[torch.float32])


def test_kgroups_zero_and_nan_rows():
    x_q, x_s, w_q, w_s, w_z, _, _ = _kgroup_problem(5, 96, 48, 32, None, False, torch.float32, bias=False)
    x_s = x_s.clone()
    x_q = x_q.clone()
    x_q[0] = 0
    x_s[2] = float("nan")
    y = gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, out_dtype=torch.float32, w_bits=4)
    assert (y[0] == 0).all() and torch.isnan(y[2]).all() and torch.isfinite(y[[1, 3, 4]]).all()


@pytest.mark.parametrize("tile", gemm_tiles("a8"), ids=lambda t: "x".join(map(str, t)))
def test_kgroups_every_autotune_config_computes_the_same(tile):
    m = 67 if tile[0] <= 64 else 131
    args = _kgroup_problem(m, 64 * 5, 5 * (tile[1] // 5 + 3), 64, 5, False, torch.float32, residual=True)
    _compare(args, out_dtype=torch.float32, w_bits=4, activation="silu", config=to_config(tile))


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("m", MS)
def test_kgroups_gate_gemm_is_the_two_launch_fold(m, symmetric, out_dtype):
    """SwiGLU's gate + up on INT4 K groups (W4A8 MLPs): bit for bit the gate GEMM's stored SiLU
    output times the up GEMM's, float or requantized by either plan."""
    x_q, x_s, w_q, w_s, w_z, _, _ = _kgroup_problem(m, 160, 40, 32, 5, symmetric, out_dtype, bias=False)
    _, _, g_q, g_s, g_z, g_b, _ = _kgroup_problem(m + 1, 160, 40, 32, 5, symmetric, out_dtype)
    gw = (g_q, g_s, g_z, g_b)
    kw = dict(out_dtype=out_dtype, w_bits=4)
    gate = gemm_a8.gemm_a8(x_q, x_s, *gw, activation="silu", **kw)
    got = gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate_weight=gw, **kw)
    assert torch.equal(got, gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate=gate, **kw))
    for plan in REQUANT_PLANS:
        q, s = gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate_weight=gw, requant=True, plan=plan, **kw)
        own_q, own_s = quantize_per_token_ref(got)
        assert torch.equal(q, own_q) and torch.equal(s, own_s), plan


def _kgroup_dual_tiles():
    from zq_compile.codegen.triton.checks import kgroup_tiles

    return kgroup_tiles("a8_dual", gemm_tiles("a8_dual"))


@pytest.mark.parametrize("tile", _kgroup_dual_tiles(), ids=lambda t: "x".join(map(str, t)))
def test_kgroups_every_dual_config_computes_the_two_launch_fold(tile):
    m = 67 if tile[0] <= 64 else 131
    args = _kgroup_problem(m, 128 * 2, 5 * (tile[1] // 5 + 3), tile[2], 5, False, torch.float32, bias=False)
    x_q, x_s, w_q, w_s, w_z, _, _ = args
    _, _, g_q, g_s, g_z, g_b, _ = _kgroup_problem(m, 128 * 2, 5 * (tile[1] // 5 + 3), tile[2], 5, False,
                                                  torch.float32, residual=True)
    kw = dict(out_dtype=torch.float32, w_bits=4, config=to_config(tile))
    gate = gemm_a8.gemm_a8(x_q, x_s, g_q, g_s, g_z, g_b, activation="silu", **kw)
    got = gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate_weight=(g_q, g_s, g_z, g_b), **kw)
    assert torch.equal(got, gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, gate=gate, **kw))


def test_kgroups_bad_tables_raise():
    x_q, x_s, w_q, w_s, w_z, b, _ = _kgroup_problem(2, 96, 16, 32, None, False, torch.float32)
    with pytest.raises(ValueError, match="gate w_scale must be fp32"):  # an N-group gate beside K groups
        gemm_a8.gemm_a8(x_q, x_s, w_q, w_s, w_z, out_dtype=torch.float32, w_bits=4,
                        gate_weight=(w_q, w_s[:, 0].contiguous(), None, None))
    with pytest.raises(ValueError, match="multiple of 32"):  # 6 blocks of 16
        gemm_a8.gemm_a8(x_q, x_s, w_q, w_s.repeat(1, 2), None, out_dtype=torch.float32, w_bits=4)
    with pytest.raises(ValueError, match="K-group scales"):  # 5 blocks do not divide 96
        gemm_a8.gemm_a8(x_q, x_s, w_q, w_s.repeat(1, 2)[:, :5].contiguous(), None, out_dtype=torch.float32, w_bits=4)
