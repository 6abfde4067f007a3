"""release_float_weights=True: the float weights of quantized linears are freed after compiling,
recompiles reuse the kept constants, eager use says why it cannot run."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch

import zq_compile
from zq_compile import ReleasedWeightError, ZeroQuantConfig, store
from zq_compile.codegen.cpu.kernels import KERNELS
from tests.models.tiny import model_output, tiny_model
from tests.modules import Block

pytestmark = pytest.mark.skipif(KERNELS["onednn"].unavailable_reason() is not None, reason="needs oneDNN")

#: one kernel for both sides of every comparison, so outputs can be compared bit for bit
KEEP = ZeroQuantConfig(cpu_kernel="onednn")
RELEASE = ZeroQuantConfig(cpu_kernel="onednn", release_float_weights=True)


def _twins(make=Block):
    torch.manual_seed(0)
    a = make().eval()
    b = make().eval()
    b.load_state_dict(a.state_dict())
    return a, b


def _run(compiled, *shapes):
    outs = []
    with torch.inference_mode():
        for shape in shapes:
            outs.append(compiled(torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))))
    return outs


def test_release_frees_the_quantized_linears_weights_and_keeps_outputs():
    kept, released = _twins()
    (ref,) = _run(zq_compile.compile(kept, KEEP), (2, 16, 64))
    torch._dynamo.reset()
    c = zq_compile.compile(released, RELEASE)
    (out,) = _run(c, (2, 16, 64))
    assert torch.equal(out, ref)
    for name, p in released.named_parameters():
        nbytes = p.untyped_storage().nbytes()
        if name in ("up.weight", "down.weight"):
            assert nbytes == 0 and p.shape == kept.get_parameter(name).shape  # same object, no data
        else:  # biases and the LayerNorm stay: the graph reads them in float
            assert nbytes == p.numel() * p.element_size()
    assert any("freed 0.08 MiB" in n for n in c.zq_reports[0].notes)
    assert kept.up.weight.untyped_storage().nbytes() > 0  # the option is per compile


def test_recompiles_after_release_reuse_the_kept_constants():
    kept, released = _twins()
    shapes = [(2, 16, 64), (3, 16, 64), (4, 20, 64), (1, 1, 64)]
    ref = _run(zq_compile.compile(kept, KEEP), *shapes)
    torch._dynamo.reset()
    c = zq_compile.compile(released, RELEASE)
    first = _run(c, shapes[0])
    import zq_compile.schemes.w8a8 as w8a8

    def refuse(*a, **k):
        raise AssertionError("a weight was quantized again")

    original, w8a8.quantize_weight = w8a8.quantize_weight, refuse
    try:
        rest = _run(c, *shapes[1:])
    finally:
        w8a8.quantize_weight = original
    assert len(c.zq_reports) >= 3  # batch, then sequence, became dynamic: new graphs
    for a, b in zip(ref, first + rest):
        assert torch.equal(a, b)


def test_eager_use_of_a_released_module_raises_naming_the_option():
    m = Block().eval()
    x = torch.randn(2, 5, 64)
    # the backend string and options= take the same key; hooks are found through Dynamo there too
    _run(torch.compile(m, backend="zeroquant", options={"release_float_weights": True}), (2, 5, 64))
    with pytest.raises(ReleasedWeightError, match="release_float_weights=True") as info:
        m(x)
    assert "'up.weight'" in str(info.value)
    with pytest.raises(ReleasedWeightError, match="release_float_weights=True"):
        m.load_state_dict(Block().state_dict())


def test_editing_a_released_weight_is_refused_at_the_next_call():
    m = Block().eval()
    c = zq_compile.compile(m, RELEASE)
    _run(c, (2, 5, 64))
    with torch.no_grad():
        m.up.weight.set_(torch.randn(160, 64))  # bumps the version counter
    with pytest.raises(ReleasedWeightError, match="modified in place"):
        _run(c, (2, 5, 64))


@pytest.mark.slow
def test_a_weight_also_read_in_float_is_kept():
    """GPT-2's lm_head is its token embedding: with quantize_embedding off, the embedding lookup
    still reads it in float, so it is kept (tests/passes/test_quantize_embedding.py: with it on)."""
    kept, released = _twins(lambda: tiny_model("gpt2"))
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        # keep_float=0: the default policy would keep the tied lm_head float, which is not tested here
        ref = model_output(zq_compile.compile(kept, dataclasses.replace(KEEP, keep_float=0))(ids))
        torch._dynamo.reset()
        c = zq_compile.compile(released, dataclasses.replace(RELEASE, keep_float=0,
                                                             disable_passes=("quantize_embedding",)))
        out = model_output(c(ids))
    assert torch.equal(out, ref)
    assert released.lm_head.weight.untyped_storage().nbytes() > 0
    assert released.transformer.h[0].mlp.c_fc.weight.untyped_storage().nbytes() == 0
    notes = " ".join(c.zq_reports[0].notes)
    assert "kept the float weight of lm_head.weight: also read in floating point" in notes


def test_another_kernel_after_release_reads_the_int8_back_from_onednn():
    kept, released = _twins()
    (ref,) = _run(zq_compile.compile(kept, ZeroQuantConfig(cpu_kernel="int_mm")), (2, 16, 64))
    torch._dynamo.reset()
    _run(zq_compile.compile(released, RELEASE), (2, 16, 64))  # kept as oneDNN handles
    torch._dynamo.reset()
    (out,) = _run(zq_compile.compile(released, ZeroQuantConfig(cpu_kernel="int_mm")), (2, 16, 64))
    assert torch.equal(out, ref)


def test_another_recipe_after_release_is_a_clear_error():
    m = Block().eval()
    _run(zq_compile.compile(m, RELEASE), (2, 5, 64))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="no quantized constants were kept") as info:
        _run(zq_compile.compile(m, ZeroQuantConfig(weight_groups=4)), (2, 5, 64))
    assert "release_float_weights=True" in str(info.value)


def test_release_float_weights_is_validated():
    with pytest.raises(ValueError, match="release_float_weights"):
        ZeroQuantConfig(release_float_weights="yes")
    assert ZeroQuantConfig.from_json(RELEASE.to_json()) == RELEASE


def test_store_holds_one_copy_the_kernels_form():
    """The store keeps what the graph holds (oneDNN's one-byte handle), not a second int8 copy."""
    m = Block().eval()
    _run(zq_compile.compile(m, KEEP), (2, 5, 64))
    (entry,) = store.entries(m.up.weight).values()
    assert entry.tensors["wq"].untyped_storage().nbytes() == 1


@pytest.mark.slow
def test_resident_memory_falls_by_the_float_weights():
    """In a fresh process: a 32 MiB fp32 linear compiled with release costs about its int8 size
    in resident memory; without release, fp32 + int8."""
    code = textwrap.dedent("""
        import ctypes, gc, torch, zq_compile
        from zq_compile import ZeroQuantConfig
        from zq_compile.benchmarks.memory import _status_kib, _trim
        torch.manual_seed(0)
        x = torch.randn(8, 4096)
        def grow(release):
            before = _status_kib("VmRSS")
            m = torch.nn.Sequential(torch.nn.Linear(4096, 2048)).eval()
            c = zq_compile.compile(m, ZeroQuantConfig(cpu_kernel="onednn", release_float_weights=release))
            with torch.inference_mode():
                c(x)
            _trim()
            return (_status_kib("VmRSS") - before) / 1024, (m, c)
        grow(False)  # warm-up: Inductor, oneDNN and the kernel race allocate once
        keep, a = grow(False)
        free, b = grow(True)
        print("ZQ", keep, free)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("ZQ ")]
    assert line, out.stderr[-2000:]
    keep, free = map(float, line[0].split()[1:])
    assert keep - free > 0.75 * 32, (keep, free)  # the 32 MiB of fp32 went back to the OS
    assert free < 0.5 * 32, (keep, free)  # about 8 MiB of int8 remain


@pytest.mark.parametrize("shape", [(1, 1), (13, 67), (96, 64)])
def test_onednn_handle_reads_back_exactly_and_is_not_packed_twice(shape):
    from zq_compile.codegen.cpu.kernels import is_weight_handle, plain_weight, release_plain

    w_q = torch.randint(-127, 128, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    w_s = torch.rand(shape[0]) + 0.1
    handle = release_plain(w_q, w_s)
    assert is_weight_handle(handle) or w_q.numel() == 1
    assert torch.equal(plain_weight(handle), w_q)
    assert release_plain(handle, w_s) is handle
    assert torch.equal(KERNELS["int_mm"].finalize_weight(handle, w_s), w_q)


def test_int4_weights_are_packed_once_across_the_rebuild_after_release(monkeypatch):
    """Release swaps the float storage, so the first call rebuilds the constants from the store,
    which holds the kernel's own handle: that handle must be reused, not packed a second time
    (SmolLM2 w4/8a8 held 90 extra oneDNN int8 copies, 76 MiB, before)."""
    from zq_compile.codegen.cpu import w4a8, weight_only

    kept, released = _twins()
    config = ZeroQuantConfig(preset="w4a8", group_size=32)
    ref = _run(zq_compile.compile(kept, config), (2, 24, 64))[0]  # the kernel races run here, once
    # the kernel that keeps an int8 copy at large M, as without release (memory first: next test)
    real_select = w4a8.select_w4a8_kernel
    monkeypatch.setattr(w4a8, "select_w4a8_kernel", lambda regime, gemm, memory_first=False: real_select(regime, gemm, False))
    packed = []
    for module, name in ((w4a8, "_make_int8"), (weight_only, "aten_int4_layout")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, **k: packed.append(tuple(a[0].shape)) or real(*a, **k))
    compiled = zq_compile.compile(released, dataclasses.replace(config, release_float_weights=True))
    out = _run(compiled, (2, 24, 64), (2, 24, 64))
    assert zq_compile.recent_reports()[-1].requantized >= 1  # the rebuild this test is about happened
    assert sorted(packed) == [(64, 80), (160, 32)]  # packed INT4 [N, K / 2], each once
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], ref)


def test_release_puts_memory_first_w4a8_keeps_no_int8_copy_of_an_int4_weight(monkeypatch):
    """With release_float_weights the large-M W4A8 kernel unpacks INT4 to int8 in each call: no
    N x K int8 copy is kept beside the packed N x K / 2 weight; the report says why."""
    from zq_compile.codegen.cpu import w4a8
    from zq_compile.metrics import sqnr_db

    kept, released = _twins()
    config = ZeroQuantConfig(preset="w4a8", group_size=32, cpu_kernel="onednn")
    ref = _run(zq_compile.compile(kept, config), (2, 24, 64))[0]
    copies = []
    real = w4a8._make_int8
    monkeypatch.setattr(w4a8, "_make_int8", lambda *a, **k: copies.append(a[0].shape) or real(*a, **k))
    compiled = zq_compile.compile(released, dataclasses.replace(config, release_float_weights=True))
    out = _run(compiled, (2, 24, 64), (2, 24, 64))
    report = zq_compile.recent_reports()[-1]
    chosen = [n for n in report.notes if n.startswith("w4a8 kernel for large M")]
    assert chosen and "memory first" in chosen[0], report.notes
    assert not copies, "an int8 copy of an INT4 weight was made under release_float_weights"
    assert torch.equal(out[0], out[1])
    assert sqnr_db(ref, out[0]) > 30  # same INT4 weights; the int8 re-rounding is made in the graph
