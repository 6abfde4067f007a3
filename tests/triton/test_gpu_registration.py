"""The GPU form of the ops, traced without a GPU: on fake CUDA tensors, AOT autograd must see
through ``zq::triton_*`` (registered as ``triton_op``s when the interpreter is off) down to the
Triton kernels themselves, as Inductor will on a real device. Nothing is launched."""

import pytest
import torch
from torch._functorch.aot_autograd import aot_export_module
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode

from zq_compile.codegen.triton.runtime import interpreting

pytestmark = pytest.mark.skipif(interpreting(), reason="under the interpreter the ops are opaque custom_ops")


class QuantizedLinear(torch.nn.Module):
    def forward(self, x, w_q, w_scale, bias):
        x_q, x_s = torch.ops.zq.triton_quantize_per_token(x)
        return (torch.ops.zq.triton_linear_a8(x_q, x_s, w_q, w_scale, None, bias, None, torch.float16, 8, "none"),)


def test_ops_trace_into_the_triton_kernels():
    from zq_compile.codegen.triton import ops

    assert ops.TRACEABLE
    with FakeTensorMode():
        args = [torch.empty(4, 13, 64, device="cuda", dtype=torch.float16),
                torch.empty(48, 64, device="cuda", dtype=torch.int8),
                torch.empty(3, device="cuda"), torch.empty(48, device="cuda", dtype=torch.float16)]
    gm, _ = aot_export_module(QuantizedLinear(), args, trace_joint=False)
    calls = [n for n in gm.graph.nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    names = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__ for n in calls]
    assert names == ["quantize_per_token_kernel", "gemm_a8_kernel"]
    assert not any("zq." in str(n.target) for n in gm.graph.nodes)  # no opaque op left
    gemm = calls[1].kwargs["kwargs"]
    # 52 tokens fall in the <= 64 bucket: the autotuner key, and one grid per config of that bucket
    assert gemm["M_BUCKET"] == 1 and len(calls[1].kwargs["grid"]) == 4
