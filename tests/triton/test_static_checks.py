"""Static GPU checks, no GPU needed: every kernel, variant and autotune config compiled ahead of
time for sm_80 (A100) and sm_90 (H100) must
- lower its dot to tensor-core instructions (mma.sync s8 / wgmma s32.s8.s8 for int8; f16 / bf16
  mma for the weight-only GEMM), using wgmma on sm_90 whenever the tile allows it,
- fit the target's shared memory per block,
- show no register spills (cuobjdump: STACK 0, LOCAL 0),
- and, for the quantizing row kernels, keep the exact numerics in the PTX (div.rn.f32, the
  round-half-even constant).
The default run checks the variants that bound register use (int8 weights with the backend's
epilogue, int4 weights with every epilogue feature); the slow run adds the other combinations
and more row widths. The builds are compiled in parallel once per module; each test reads one.
"""

import pytest

from zq_compile.codegen.triton import checks
from zq_compile.codegen.triton.configs import (DROPPED, KGROUP_SIZES, TABLES, float_x_fits, gemm_tiles, kgroup_tile,
                                              tile_of)
from zq_compile.codegen.triton.runtime import interpreting

pytestmark = pytest.mark.skipif(interpreting(), reason="AOT compilation needs compiled (not interpreted) kernels")

FAST = [(s, a) for s in checks.all_specs(full=False) for a in checks.ARCHS]
_fast_ids = {(s.id, a) for s, a in FAST}
FULL_ONLY = [(s, a) for s in checks.all_specs(full=True) for a in checks.ARCHS if (s.id, a) not in _fast_ids]


def _ids(jobs):
    return [f"{s.id}/sm_{a}" for s, a in jobs]


@pytest.fixture(scope="module")
def fast_builds():
    return {(r["kernel"], r["variant"], r["config"], r["arch"]): r for r in checks.check_many(FAST)}


@pytest.fixture(scope="module")
def full_builds():
    return {(r["kernel"], r["variant"], r["config"], r["arch"]): r for r in checks.check_many(FULL_ONLY)}


def _assert_passes(spec, arch, builds):
    r = builds[(spec.kernel, spec.variant, spec.config, arch)]
    assert not r["problems"], f"{spec.id} on sm_{arch}: {r['problems']} (drop it from configs.py, with the reason)"
    if spec.tensor_cores:
        assert r["tensor_core_ops"], "no tensor-core instruction at all"


@pytest.mark.parametrize("spec, arch", FAST, ids=_ids(FAST))
def test_build_passes(spec, arch, fast_builds):
    _assert_passes(spec, arch, fast_builds)


@pytest.mark.slow
@pytest.mark.parametrize("spec, arch", FULL_ONLY, ids=_ids(FULL_ONLY))
def test_build_passes_full_matrix(spec, arch, full_builds):
    _assert_passes(spec, arch, full_builds)


@pytest.mark.parametrize("kind", ["a8", "a8_dual", "a16"])
def test_every_autotune_config_is_in_the_checked_matrix(kind):
    """Each table's tiles are checked with that table's variants (the dual table with the gate +
    up kernel's, the plain one with every other)."""
    dual = kind == "a8_dual"
    checked = {s.tile for s, _ in FAST if s.kernel == f"gemm_{kind.removesuffix('_dual')}"
               and s.constexprs.get("GATE_GEMM", False) == dual and not s.constexprs.get("K_GROUP")}
    assert set(gemm_tiles(kind)) == checked
    assert all(t for t in TABLES[kind].values()), "every M bucket needs at least one config"


@pytest.mark.parametrize("k_group", KGROUP_SIZES)
@pytest.mark.parametrize("kind, variants", [("a16", ("w4-kgroup-bias-fp16", "w4-kgroup-all-bf16")),
                                            ("a8", ("w4-kgroup-bias-int8", "w4-kgroup-all-int8"))])
def test_every_kgroup_tile_is_in_the_checked_matrix(kind, variants, k_group):
    """INT4 K groups run the plain table's tiles with BLOCK_K cut to the group (what the pruner
    hands the autotuner): each cut tile is built with both K-group epilogues."""
    for variant in variants:
        checked = {s.tile for s, _ in FAST if s.kernel == f"gemm_{kind}" and s.variant == variant}
        wanted = {kgroup_tile(t, k_group) for t in gemm_tiles(kind)} - {t for (k, t) in DROPPED if k == f"{kind}_kgroup"}
        assert wanted and wanted <= checked, variant


def test_the_pruner_never_hands_a_dropped_kgroup_tile():
    from zq_compile.codegen.triton.configs import bucket_pruner, gemm_configs

    prune = bucket_pruner("a8")
    for m in (1, 50, 200, 4000):
        for k_group in KGROUP_SIZES:
            for dual, kind in ((False, "a8_kgroup"), (True, "a8_dual_kgroup")):
                kept = {tile_of(c) for c in prune(gemm_configs("a8"), {"M": m}, K_GROUP=k_group, GATE_GEMM=dual)}
                assert kept and not {t for (k, t) in DROPPED if k == kind} & kept, (m, k_group, dual)
                assert all(k_group % t[2] == 0 for t in kept)


def test_dropped_configs_are_not_in_use():
    for (kind, tile), reason in DROPPED.items():
        if kind.endswith("_kgroup"):  # a cut tile: neither built by the checks nor handed out by the pruner
            table = kind.removesuffix("_kgroup")
            assert tile not in checks.kgroup_tiles(table, gemm_tiles(table)) and reason
        else:
            assert tile not in gemm_tiles(kind) and reason


def test_the_check_catches_a_spilling_tile():
    """The issue's 128x128x64 int8 tile at 4 warps spills: the check must say so (a check that
    cannot fail proves nothing)."""
    spec = checks.gemm_spec("gemm_a8", (128, 128, 64, 4, 4), 8, "bias", "int8")
    result = checks.check(spec, 80)
    assert result["stack"] > 0 and any("spills" in p for p in result["problems"])
    assert any(".s8" in op for op in result["tensor_core_ops"])


def test_float_input_tiles_are_checked_and_the_dropped_one_does_not_fit():
    """A GEMM that quantizes its float input (fuse_quantize_prologue) runs only the tiles
    ``float_x_fits`` keeps: each bucket keeps one, all of them are in the checked matrix, and
    the tile it drops for fp32 input really overflows sm_80's shared memory."""
    kept = {t for t in gemm_tiles("a8") if float_x_fits(t, 4)}
    checked = {s.tile for s, _ in FAST if s.kernel == "gemm_a8" and "quantize_x" in s.variant
               and not s.constexprs["GATE_GEMM"]}
    assert checked == kept
    # the gate + up kernel quantizing its input: the dual tiles that fit with two weight tiles
    dual_kept = {t for t in gemm_tiles("a8_dual") if float_x_fits(t, 4, 2)}
    assert dual_kept and dual_kept == {s.tile for s, _ in FAST if "quantize_x" in s.variant and s.constexprs["GATE_GEMM"]}
    assert all(any(float_x_fits(t, 4) for t in tiles) for tiles in TABLES["a8"].values())
    (dropped,) = set(gemm_tiles("a8")) - kept
    spec = checks.gemm_spec("gemm_a8", dropped, 8, "quantize_x-residual", "int8")
    assert any("shared memory" in p for p in checks.check(spec, 80)["problems"])
