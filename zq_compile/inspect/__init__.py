"""What the compiler did to a model, why, and what it cost: ``zq_compile.explain`` builds an
ExplainReport; ``text``, ``html`` render it (JSON via ``ExplainReport.to_json``)."""

from zq_compile.inspect.explain import explain
from zq_compile.inspect.schema import SCHEMA_VERSION, ExplainReport

__all__ = ["SCHEMA_VERSION", "ExplainReport", "explain"]
