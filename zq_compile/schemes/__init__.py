"""Scheme handlers: how a linear is rewritten for each quantization scheme.

``handler_for(scheme)`` looks the handler up by the scheme's name, so a new scheme adds a module
here that registers itself, not a branch in the rewrite pass.
"""

from __future__ import annotations

from zq_compile.config import QuantScheme
from zq_compile.schemes.base import HANDLERS, SchemeHandler
from zq_compile.schemes import w4a8, w8a8, weight_only  # noqa: F401  (registers)


def handler_for(scheme: QuantScheme) -> SchemeHandler:
    try:
        return HANDLERS[scheme.name]
    except KeyError:
        raise NotImplementedError(f"scheme {scheme.name} has no rewrite handler yet") from None


__all__ = ["HANDLERS", "SchemeHandler", "handler_for"]
