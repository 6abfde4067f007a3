"""Target "triton" in the config and the backend, in a process without GPU or interpreter:
where it may run, what "auto" picks, and that an impossible request fails loudly."""

import pytest
import torch

import zq_compile
from zq_compile import ZeroQuantConfig
from zq_compile.backend import resolve_target
from zq_compile.codegen.triton.configs import (A8_DUAL_TILES, A8_TILES, A16_TILES, bucket_pruner, gemm_configs, norm_launch,
                                               row_launch, tile_of)
from zq_compile.codegen.triton.runtime import device_problem, interpreting, m_bucket

pytestmark = pytest.mark.skipif(interpreting(), reason="checks the behaviour without TRITON_INTERPRET")


def test_triton_is_a_valid_target():
    assert ZeroQuantConfig(target="triton").target == "triton"
    assert ZeroQuantConfig.from_json(ZeroQuantConfig(target="triton").to_json()).target == "triton"


def test_cpu_tensors_need_the_interpreter():
    why = device_problem(torch.device("cpu"))
    assert "TRITON_INTERPRET=1" in why


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_tensors_need_cuda():
    assert "not available" in device_problem(torch.device("cuda"))


def test_auto_picks_cpu_for_cpu_inputs():
    assert resolve_target(ZeroQuantConfig(), [torch.randn(2, 3)]) == "cpu"
    assert resolve_target(ZeroQuantConfig(target="triton"), [torch.randn(2, 3)]) == "triton"


def test_explicit_triton_target_without_gpu_or_interpreter_raises():
    m = torch.nn.Linear(8, 8)
    with pytest.raises(Exception, match="target 'triton' cannot run here: .*TRITON_INTERPRET=1"):
        with torch.inference_mode():
            zq_compile.compile(m, {"target": "triton"})(torch.randn(2, 8))


@pytest.mark.parametrize("m, bucket", [(1, 0), (16, 0), (17, 1), (64, 1), (65, 2), (256, 2), (257, 3), (8192, 3)])
def test_m_buckets(m, bucket):
    assert m_bucket(m) == bucket


@pytest.mark.parametrize("kind, table", [("a8", A8_TILES), ("a16", A16_TILES)])
@pytest.mark.parametrize("m", [1, 40, 100, 5000])
def test_pruner_offers_exactly_the_bucket_configs(kind, table, m):
    chosen = bucket_pruner(kind)(gemm_configs(kind), {"M": m})
    assert [tile_of(c) for c in chosen] == table[m_bucket(m)]
    if kind == "a8":  # gate + up in one kernel: the dual table's bucket
        dual = bucket_pruner(kind)(gemm_configs(kind), {"M": m}, GATE_GEMM=True)
        assert [tile_of(c) for c in dual] == A8_DUAL_TILES[m_bucket(m)]


@pytest.mark.parametrize("k", [1, 64, 67, 1024, 1500, 11008, 28672])
def test_row_launch_covers_any_width(k):
    block_m, block_k, warps = row_launch(k)
    assert block_k >= min(k, 1024) and block_k & (block_k - 1) == 0 and block_m * block_k <= 1024 * 16


@pytest.mark.parametrize("n", [64, 67, 768, 4096, 16384])
def test_norm_launch_holds_the_row(n):
    block_m, block_n, warps = norm_launch(n)
    assert block_n >= n and block_n & (block_n - 1) == 0 and 4 <= warps <= 16
