"""Reading Inductor's generated code: op names out of kernel names, and the data flow of the
wrapper (which kernel reads a GEMM's output, which GEMM reads a kernel's output)."""

from zq_compile.inspect.kernels import kernel_ops, parse_calls

# Abridged from the code Inductor generated for tests/models/tiny.py's BERT (kernel bodies cut).
CODE = """
cpp_fused_add_linear_w8a8_native_layer_norm_quantize_per_token_3 = async_compile.cpp_pybinding(['float*', 'float*', 'const float*', 'uint8_t*'], r'''
#include <torch/csrc/inductor/cpp_prefix.h>
extern "C"  void  kernel(float* in_out_ptr0,
                       float* in_out_ptr1,
                       const float* in_ptr0,
                       uint8_t* out_ptr0)
{
}
''')
cpp_fused_gelu_linear_w8a8_quantize_per_token_4 = async_compile.cpp_pybinding(['float*', 'const float*', 'uint8_t*'], r'''
extern "C"  void  kernel(float* in_out_ptr0,
                       const float* in_ptr0,
                       uint8_t* out_ptr0)
{
}
''')
class Runner:
    def call(self, args):
        arg0_1, arg1_1, arg2_1, arg3_1 = args
        buf29 = empty_strided_cpu((32, 64), (64, 1), torch.uint8)
        # Topologically Sorted Source Nodes: [transpose_3, quantize_per_token_default_1, linear_w8a8_default_3], Original ATen: [aten.transpose, zq.quantize_per_token, zq.linear_w8a8]
        buf30 = torch.ops.zq.onednn_u8s8_mm.default(buf29, arg0_1, arg1_1)
        buf31 = buf30
        del buf30
        buf32 = reinterpret_tensor(buf31, (2, 16, 64), (1024, 64, 1), 0); del buf31  # reuse
        buf36 = buf32; del buf32  # reuse
        buf40 = empty_strided_cpu((2, 16, 1), (16, 1, 32), torch.float32)
        buf41 = buf29; del buf29  # reuse
        cpp_fused_add_linear_w8a8_native_layer_norm_quantize_per_token_3(buf36, buf40, arg2_1, buf41)
        # Topologically Sorted Source Nodes: [quantize_per_token_default_2, linear_w8a8_default_4], Original ATen: [zq.quantize_per_token, zq.linear_w8a8]
        buf42 = torch.ops.zq.onednn_u8s8_mm.default(buf41, arg2_1, arg3_1)
        buf45 = reinterpret_tensor(buf42, (2, 16, 128), (2048, 128, 1), 0); del buf42  # reuse
        buf50 = empty_strided_cpu((32, 128), (128, 1), torch.uint8)
        cpp_fused_gelu_linear_w8a8_quantize_per_token_4(buf45, buf36, buf50)
        return (buf50, )
"""


def test_kernel_ops_split_the_name_into_op_names():
    assert kernel_ops("cpp_fused_gelu_linear_w8a8_quantize_per_token_4") == ["gelu", "linear_w8a8", "quantize_per_token"]
    assert kernel_ops("cpp_fused_add_linear_w8a8_native_layer_norm_quantize_per_token_3") == [
        "add", "linear_w8a8", "native_layer_norm", "quantize_per_token"]
    assert kernel_ops("triton_poi_fused_add_mul_0") == ["add", "mul"]
    assert kernel_ops("extern_thing") == ["extern_thing"]


def test_parse_calls_follows_buffers_through_reuse_and_reinterpret():
    calls = parse_calls(CODE)
    assert [c.name for c in calls] == [
        "torch.ops.zq.onednn_u8s8_mm.default",
        "cpp_fused_add_linear_w8a8_native_layer_norm_quantize_per_token_3",
        "torch.ops.zq.onednn_u8s8_mm.default",
        "cpp_fused_gelu_linear_w8a8_quantize_per_token_4",
    ]
    gemm3, norm, gemm4, gelu = calls
    assert gemm3.extern and gemm3.source_nodes[-1] == "linear_w8a8_default_3"
    assert norm.producers == {0}  # reads GEMM 3's output (buf36 <- buf32 <- buf31 <- buf30)
    assert norm.writes == ["buf36", "buf40", "buf41"]
    assert gemm4.producers == {1}  # its int8 input buf41 was written by the norm kernel
    assert gelu.producers == {1, 2}  # GEMM 4's output and the residual from the norm kernel



Q = "'" * 3
INT_MM = (
    f"cpp_fused_quantize_per_token_0 = async_compile.cpp_pybinding([], r{Q}\n"
    'extern "C" void kernel(const float* in_ptr0, int8_t* out_ptr0)\n{}\n'
    f"{Q})\n"
    f"cpp_fused_gelu_1 = async_compile.cpp_pybinding([], r{Q}\n"
    'extern "C" void kernel(const int* in_ptr0, float* out_ptr0)\n{}\n'
    f"{Q})\n"
    """
    def call(self, args):
        cpp_fused_quantize_per_token_0(arg0_1, buf9)
        # Topologically Sorted Source Nodes: [linear_w8a8_default], Original ATen: [zq.linear_w8a8]
        extern_kernels._int_mm(reinterpret_tensor(buf9, (32, 64), (64, 1), 0), reinterpret_tensor(arg42_1, (64, 64), (1, 64), 0), out=buf10)
        cpp_fused_gelu_1(buf10, buf11)
"""
)


def test_extern_calls_with_reinterpreted_arguments_and_out():
    quantize, gemm, gelu = parse_calls(INT_MM)
    assert gemm.reads == ["buf9", "arg42_1"] and gemm.writes == ["buf10"]
    assert gemm.producers == {quantize.index} and gelu.producers == {gemm.index}
