"""The GPU benchmark scripts refuse to run without CUDA instead of writing results (they are
ready for a lent GPU; `bench/triton/gpu_models.py --smoke` checks the end-to-end one on CPU)."""

import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA these scripts measure for real")
@pytest.mark.parametrize("script, args", [("gpu_bench.py", ["--quick"]), ("gpu_models.py", [])])
def test_script_refuses_without_cuda_and_writes_nothing(script, args, tmp_path):
    before = set((ROOT / "bench" / "results").glob("triton_gpu*"))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "triton" / script), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode != 0 and "no CUDA device here" in done.stderr
    assert set((ROOT / "bench" / "results").glob("triton_gpu*")) == before
