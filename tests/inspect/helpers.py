import math
import re

from zq_compile.inspect.schema import ZQ_PARTS


def generated_fusions(codes: list[str]) -> set[str]:
    """Names of the kernels in Inductor's code that fuse a quantize step or a GEMM epilogue with
    an op of the model, read straight from the kernel definitions (not through inspect's parser)."""
    names = set()
    for code in codes:
        for name in re.findall(r"^((?:cpp|triton_\w+?)_fused_\w+) = async_compile", code, re.M):
            body = re.sub(r"_\d+$", "", name.split("_fused_", 1)[1])
            if any(p in body for p in ("quantize_per_token", "linear_w8a8")):
                rest = body
                for p in ZQ_PARTS:
                    rest = rest.replace(p, "")
                if rest.strip("_"):
                    names.add(name)
    return names


def check_report(report, codes, modules: set[str]):
    """Every linear listed with its scheme and a finite SQNR; every fusion of the code listed."""
    rows = report.linears
    assert {r.module for r in rows} == modules, report
    for r in rows:
        if r.scheme is None:  # kept float: measured in the model (inf if no quantized layer precedes it)
            assert r.sqnr_db is not None and r.local_sqnr_db is None, r
            continue
        assert r.scheme == "w8a8" and r.kernel, r
        assert r.sqnr_db is not None and math.isfinite(r.sqnr_db), r
        if r.reason.endswith("smoothed"):  # W * s reads X / s: only the in-model error is defined
            assert r.local_sqnr_db is None, r
        else:
            assert r.local_sqnr_db is not None and math.isfinite(r.local_sqnr_db), r
        assert r.max_abs_err is not None and math.isfinite(r.max_abs_err), r
        assert r.zq_node, r
    listed = {f.kernel for f in report.fusions}
    shown = generated_fusions(codes)
    assert shown, "the generated code fused nothing with a quantized op"
    assert shown <= listed, (shown - listed, report)
    # a GEMM's int8 input is written by one kernel, and before its output exists
    for g in report.graphs:
        fed = [m for f in g.fusions for m in f.quantizes_for]
        assert len(fed) == len(set(fed)), fed
        for f in g.fusions:
            assert not set(f.epilogue_of) & set(f.quantizes_for), f
    assert math.isfinite(report.model_error.sqnr_db)
