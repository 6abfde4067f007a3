"""One differential check: a model compiled by zeroquant against its eager fp32 self."""

from __future__ import annotations

import copy
import warnings

import torch
import torch._dynamo

import zq_compile
from zq_compile.metrics import sqnr_db
from tests.robust.fuzz_models import ModelSpec, build, make_input
from tests.robust.presets import sqnr_floor


def check(spec: ModelSpec, preset: str, target: str) -> float:
    """Compile ``spec``'s model with ``preset`` on ``target``; assert it runs, keeps shape and
    dtype, is finite, quantized at least one linear and keeps the preset's SQNR floor against
    the fp32 eager model (the same weights, already rounded to ``spec.dtype``); under
    ``spec.release``, a second call returns the same output. Returns the SQNR."""
    torch._dynamo.reset()  # a fresh cache per example: each compiles from scratch
    model = build(spec)
    reference = copy.deepcopy(model).float()
    x = make_input(spec)
    options = {"preset": preset, "target": target}
    if spec.release:
        options["release_float_weights"] = True
    compiled = zq_compile.compile(model, options)
    with torch.inference_mode():
        want = reference(x if spec.embed != "none" else x.float())

    def call():
        if spec.grad:
            return _with_grad(compiled, model, x)
        with torch.inference_mode():
            return compiled(x)

    got = call()
    if spec.release:  # the float weights are gone now: a second call must still serve the same numbers
        assert torch.equal(call(), got), "a second call after release_float_weights changed the output"
    assert got.shape == want.shape and got.dtype == spec.dtype, (got.shape, got.dtype)
    assert torch.isfinite(got).all(), "non-finite output from finite inputs"
    reports = compiled.zq_reports
    assert reports and sum(len(r.quantized) for r in reports) >= 1, [r.summary() for r in reports]
    db = sqnr_db(want, got.float())
    floor = sqnr_floor(preset, spec.dtype)
    assert db >= floor, f"SQNR {db:.1f} dB < {floor} dB for {spec} ({preset}, {target})\n" + "\n".join(
        r.summary() for r in reports)
    if spec.grad and all(d.quantized for r in reports for d in r.decisions):
        # every path to the output crosses the quantized head: no gradient may come out
        assert not got.requires_grad, "a gradient passed through a quantized linear"
    return db


def _with_grad(compiled, model, x):
    """The output of a grad-enabled call; when it carries a gradient, backward runs and every
    gradient it leaves is finite."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*inference-only", UserWarning)
        got = compiled(x)
    if got.requires_grad:
        got.float().sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
    return got.detach()
