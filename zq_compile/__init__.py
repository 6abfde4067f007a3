"""zeroquant: ZeroQuant (W8A8, token-wise activations, group-wise weights) as a torch.compile backend.

    model = torch.compile(model, backend="zeroquant")              # after pip install
    model = zq_compile.compile(model, ZeroQuantConfig(preset="w8a8"))
"""

from zq_compile import ops  # noqa: F401  (registers the zq:: ops)
from zq_compile.api import compile  # noqa: A004
from zq_compile.calibrate import calibrate
from zq_compile.config import PRESETS, QuantScheme, ZeroQuantConfig
from zq_compile.inspect import ExplainReport, explain
from zq_compile.report import CompileReport, LinearDecision, recent_reports
from zq_compile.serialize import WeightsFileError, load, save
from zq_compile.store import ReleasedWeightError

__all__ = [
    "PRESETS",
    "CompileReport",
    "ExplainReport",
    "LinearDecision",
    "QuantScheme",
    "ReleasedWeightError",
    "WeightsFileError",
    "ZeroQuantConfig",
    "calibrate",
    "compile",
    "explain",
    "load",
    "recent_reports",
    "save",
]
