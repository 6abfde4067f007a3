"""The ``zq::triton_*`` torch ops: the Triton kernels as ops torch.compile can trace.

With a GPU the ops are ``torch.library.triton_op``s whose kernels launch through ``wrap_triton``:
Inductor sees the Triton kernels themselves (it can fuse around them, and AOT export works). Under
the Triton interpreter (``TRITON_INTERPRET=1``) that path fails at trace time (the interpreted
kernel would run on FakeTensors), so the same functions are registered as opaque ``custom_op``s
with ``register_fake`` shape functions instead. One kernel source, two registrations; which one
is decided when this module is first imported, like Triton's own choice of interpreter.

Every op takes activations with any leading dims ([..., K]) and returns [..., N].

    triton_quantize_per_token(x) -> (q int8, scale fp32 [..., 1])
    triton_norm_quantize(x, weight?, bias?, eps, rms, emit_float, quant_scale?) -> (q, scale, y or empty)
    triton_linear_a8(x_q, x_scale, w_q, w_scale, w_zero?, bias?, residual?, out_dtype, w_bits,
                     activation, gate?, gate_w_q?, gate_w_scale?, gate_w_zero?, gate_bias?) -> y
                     (gate_w_*: SwiGLU's gate weight; the kernel computes SiLU(gate) itself)
    triton_quantize_linear_a8(x float, w_q, w_scale, w_zero?, bias?, residual?, out_dtype, w_bits, activation,
                              gate?, gate_w_q?, ...) -> y        (x quantized per token inside the GEMM kernel)
    triton_linear_a8_requant(... same ..., float_dtype, w_bits, activation, out_scale?, gate?, plan,
                             gate_w_q?, ...) -> (q, scale)
                             (plan: "auto" | "store" | "recompute", runtime.requant_plan)
    triton_linear_a16(x, w_q, w_scale, w_zero?, bias?, residual?, w_bits, activation) -> y
"""

from __future__ import annotations

import torch
from torch import Tensor

from zq_compile.codegen.triton import gemm_a8, gemm_a16, norm_quantize, quantize
from zq_compile.codegen.triton.runtime import identity_launcher, interpreting

#: True: triton_op + wrap_triton (GPU); False: custom_op + register_fake (interpreter).
TRACEABLE = not interpreting()


def _launcher():
    if TRACEABLE:
        from torch.library import wrap_triton

        return wrap_triton
    return identity_launcher


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    q, s = quantize.quantize_per_token(_rows(x), launch=_launcher())
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


def _quantize_per_token_fake(x):
    return torch.empty_like(x, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


def _norm_quantize(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, rms: bool,
                   emit_float: bool, quant_scale: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    q, s, y = norm_quantize.norm_quantize(_rows(x), weight, bias, eps, rms=rms, emit_float=emit_float,
                                          quant_scale=quant_scale, launch=_launcher())
    y = y.reshape(x.shape) if y is not None else x.new_empty((0,))
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1), y


def _norm_quantize_fake(x, weight, bias, eps, rms, emit_float, quant_scale=None):
    y = torch.empty_like(x) if emit_float else x.new_empty((0,))
    return torch.empty_like(x, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32), y


def _gate_weight(w_q, w_scale, w_zero, bias):
    """gemm_a8's gate_weight from the ops' flat arguments (None when there is no gate weight)."""
    if w_q is None:
        if w_scale is not None or w_zero is not None or bias is not None:
            raise ValueError("gate_w_scale, gate_w_zero and gate_bias come with gate_w_q")
        return None
    if w_scale is None:
        raise ValueError("gate_w_q needs gate_w_scale")
    return (w_q, w_scale, w_zero, bias)


def _linear_a8(x_q: Tensor, x_scale: Tensor, w_q: Tensor, w_scale: Tensor, w_zero: Tensor | None,
               bias: Tensor | None, residual: Tensor | None, out_dtype: torch.dtype, w_bits: int,
               activation: str, gate: Tensor | None = None, gate_w_q: Tensor | None = None,
               gate_w_scale: Tensor | None = None, gate_w_zero: Tensor | None = None,
               gate_bias: Tensor | None = None) -> Tensor:
    y = gemm_a8.gemm_a8(_rows(x_q), x_scale.reshape(-1, 1), w_q, w_scale, w_zero, bias,
                        None if residual is None else _rows(residual), out_dtype=out_dtype, w_bits=w_bits,
                        activation=activation, gate=None if gate is None else _rows(gate),
                        gate_weight=_gate_weight(gate_w_q, gate_w_scale, gate_w_zero, gate_bias), launch=_launcher())
    return y.reshape(*x_q.shape[:-1], w_q.shape[0])


def _linear_a8_fake(x_q, x_scale, w_q, w_scale, w_zero, bias, residual, out_dtype, w_bits, activation, gate=None,
                    gate_w_q=None, gate_w_scale=None, gate_w_zero=None, gate_bias=None):
    return x_q.new_empty((*x_q.shape[:-1], w_q.shape[0]), dtype=out_dtype)


def _quantize_linear_a8(x: Tensor, w_q: Tensor, w_scale: Tensor, w_zero: Tensor | None, bias: Tensor | None,
                        residual: Tensor | None, out_dtype: torch.dtype, w_bits: int, activation: str,
                        gate: Tensor | None = None, gate_w_q: Tensor | None = None,
                        gate_w_scale: Tensor | None = None, gate_w_zero: Tensor | None = None,
                        gate_bias: Tensor | None = None) -> Tensor:
    y = gemm_a8.gemm_a8(_rows(x), None, w_q, w_scale, w_zero, bias, None if residual is None else _rows(residual),
                        out_dtype=out_dtype, w_bits=w_bits, activation=activation,
                        gate=None if gate is None else _rows(gate),
                        gate_weight=_gate_weight(gate_w_q, gate_w_scale, gate_w_zero, gate_bias), launch=_launcher())
    return y.reshape(*x.shape[:-1], w_q.shape[0])


def _quantize_linear_a8_fake(x, w_q, w_scale, w_zero, bias, residual, out_dtype, w_bits, activation, gate=None,
                             gate_w_q=None, gate_w_scale=None, gate_w_zero=None, gate_bias=None):
    return x.new_empty((*x.shape[:-1], w_q.shape[0]), dtype=out_dtype)


def _linear_a8_requant(x_q: Tensor, x_scale: Tensor, w_q: Tensor, w_scale: Tensor, w_zero: Tensor | None,
                       bias: Tensor | None, residual: Tensor | None, float_dtype: torch.dtype, w_bits: int,
                       activation: str, out_scale: Tensor | None = None,
                       gate: Tensor | None = None, plan: str = "auto", gate_w_q: Tensor | None = None,
                       gate_w_scale: Tensor | None = None, gate_w_zero: Tensor | None = None,
                       gate_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    q, s = gemm_a8.gemm_a8(_rows(x_q), x_scale.reshape(-1, 1), w_q, w_scale, w_zero, bias,
                           None if residual is None else _rows(residual), out_dtype=float_dtype, w_bits=w_bits,
                           activation=activation, requant=True, out_scale=out_scale,
                           gate=None if gate is None else _rows(gate),
                           gate_weight=_gate_weight(gate_w_q, gate_w_scale, gate_w_zero, gate_bias), plan=plan,
                           launch=_launcher())
    lead = x_q.shape[:-1]
    return q.reshape(*lead, w_q.shape[0]), s.reshape(*lead, 1)


def _linear_a8_requant_fake(x_q, x_scale, w_q, w_scale, w_zero, bias, residual, float_dtype, w_bits, activation,
                            out_scale=None, gate=None, plan="auto", gate_w_q=None, gate_w_scale=None,
                            gate_w_zero=None, gate_bias=None):
    lead = x_q.shape[:-1]
    return (x_q.new_empty((*lead, w_q.shape[0]), dtype=torch.int8),
            x_q.new_empty((*lead, 1), dtype=torch.float32))


def _linear_a16(x: Tensor, w_q: Tensor, w_scale: Tensor, w_zero: Tensor | None, bias: Tensor | None,
                residual: Tensor | None, w_bits: int, activation: str) -> Tensor:
    y = gemm_a16.gemm_a16(_rows(x), w_q, w_scale, w_zero, bias, None if residual is None else _rows(residual),
                          w_bits=w_bits, activation=activation, launch=_launcher())
    return y.reshape(*x.shape[:-1], w_q.shape[0])


def _linear_a16_fake(x, w_q, w_scale, w_zero, bias, residual, w_bits, activation):
    return x.new_empty((*x.shape[:-1], w_q.shape[0]))


def _register(name: str, fn, fake):
    qualname = f"zq::{name}"
    if TRACEABLE:
        # triton_op derives the fake implementation by running fn on FakeTensors, where the
        # wrap_triton launches do nothing.
        return torch.library.triton_op(qualname, fn, mutates_args=())
    op = torch.library.custom_op(qualname, fn, mutates_args=())
    op.register_fake(fake)
    return op


triton_quantize_per_token = _register("triton_quantize_per_token", _quantize_per_token, _quantize_per_token_fake)
triton_norm_quantize = _register("triton_norm_quantize", _norm_quantize, _norm_quantize_fake)
triton_linear_a8 = _register("triton_linear_a8", _linear_a8, _linear_a8_fake)
triton_quantize_linear_a8 = _register("triton_quantize_linear_a8", _quantize_linear_a8, _quantize_linear_a8_fake)
triton_linear_a8_requant = _register("triton_linear_a8_requant", _linear_a8_requant, _linear_a8_requant_fake)
triton_linear_a16 = _register("triton_linear_a16", _linear_a16, _linear_a16_fake)
