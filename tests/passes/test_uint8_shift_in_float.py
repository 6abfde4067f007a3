"""uint8_shift_in_float: oneDNN's x + 128 is added in float and converted to uint8 once; the
result is bit-identical to the int8 -> int32 -> uint8 chain it replaces, which the generated
code no longer holds."""

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import zq_compile
from tests.modules import Block
from zq_compile.codegen.cpu.kernels import KERNELS

pytestmark = pytest.mark.skipif(KERNELS["onednn"].unavailable_reason() is not None,
                                reason="the shift exists for oneDNN's uint8 activations only")


def _run(model, x, **options):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="zeroquant", options={"cpu_kernel": "onednn", "smooth": False, "keep_float": 0, **options})
    # the pass counts come from a code-generated graph: one served from Inductor's cache has none
    with torch.inference_mode(), torch._inductor.config.patch(fx_graph_cache=False):
        out, (code,) = run_and_get_code(compiled, x)
    return out, code, zq_compile.recent_reports()[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 13, 67])
def test_bit_identical_to_the_int_chain_and_no_int32_conversion_left(dtype, rows):
    torch.manual_seed(rows)
    model = Block().eval().to(dtype)
    x = torch.randn(rows, 64, dtype=dtype) * 3
    x[0] = 0  # an all-zero row (scale 1)
    if rows > 2:
        x[1, 5] = float("nan")  # a NaN confined to its row
    fast, code, report = _run(model, x)
    slow, slow_code, slow_report = _run(model, x, disable_passes=("uint8_shift_in_float",))
    assert report.pass_counts["uint8_shift_in_float"] == 2  # one per quantized activation
    assert "uint8_shift_in_float" not in slow_report.pass_counts
    assert torch.equal(fast.isnan(), slow.isnan())
    assert torch.equal(torch.nan_to_num(fast), torch.nan_to_num(slow))
    assert "convert<int32_t" in slow_code and "convert<int32_t" not in code


def test_a_float_source_that_is_not_integral_is_left_alone():
    """Only clamp(round(...)) sources are rewritten: a truncating conversion of other float
    values differs between the two forms for negative fractions."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from zq_compile.passes import uint8_shift_in_float

    def chain(x):
        q = x.clamp(-127, 127).to(torch.int8)  # not rounded
        return (q.to(torch.int32) + 128).to(torch.uint8)

    def rounded(x):
        q = torch.round(x).clamp(-127, 127).to(torch.int8)
        return (q.to(torch.int32) + 128).to(torch.uint8)

    x = torch.tensor([-3.7, -0.5, 0.2, 126.9, -200.0])
    for fn, expected in ((chain, 0), (rounded, 1)):
        gm = make_fx(fn, decomposition_table=torch._inductor.decomposition.select_decomp_table(),
                     tracing_mode="fake")(x)
        assert uint8_shift_in_float.run(gm.graph) == expected
        gm.recompile()
        assert torch.equal(gm(x), fn(x))


def test_unknown_pass_names_list_the_post_grad_ones():
    with pytest.raises(ValueError, match="uint8_shift_in_float"):
        zq_compile.ZeroQuantConfig(disable_passes=("no_such_pass",))
