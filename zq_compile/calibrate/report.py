"""What calibration measured and decided: alpha, per-layer error, the linears kept in float."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerError:
    module: str
    shape: tuple[int, int]  # (N, K)
    sqnr_db: float  # output SQNR of the quantized linear against float (isolated: float input)
    kept_float: str | None = None  # why the policy keeps it float, or None


@dataclass
class CalibrationReport:
    #: where the statistics came from: "calibrate(data)" or "first call inputs"
    source: str
    batches: int
    tokens: int  # rows seen by the linears (tokens x batch) in the first batch's largest linear
    smooth: object  # the config's value
    keep_float: object  # the config's value
    alpha: float | None = None  # chosen (None: no smoothing)
    #: model-level SQNR (dB, all float outputs vs the float model) for each alpha tried ("off": none)
    alpha_search: dict[str, float] = field(default_factory=dict)
    model_sqnr_db: float | None = None  # with the chosen alpha, before the policy
    model_sqnr_db_after_policy: float | None = None
    #: model-level SQNR after keeping 1, 2, ... of the worst linears float ("auto" policy)
    policy_steps: list[tuple[str, float]] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lkd: object = None  # the LkdReport when the config asked for LKD

    @property
    def kept_float(self) -> list[LayerError]:
        return [layer for layer in self.layers if layer.kept_float]

    def summary_lines(self) -> list[str]:
        alpha = "off" if self.alpha is None else f"alpha {self.alpha:g}"
        lines = [f"calibration: {self.source}, {self.batches} batch(es), {self.tokens} tokens; smoothing {alpha} "
                 f"(smooth={self.smooth!r})"]
        if len(self.alpha_search) > 1:
            tried = ", ".join(f"{k} {v:.2f}" for k, v in self.alpha_search.items())
            lines.append(f"  alpha search, model SQNR dB: {tried}")
        if self.model_sqnr_db is not None:
            after = self.model_sqnr_db_after_policy
            lines.append(f"  model SQNR {self.model_sqnr_db:.2f} dB quantized"
                         + (f", {after:.2f} dB with the keep_float policy" if after is not None else ""))
        for layer in self.kept_float:
            lines.append(f"  float  {layer.module} (SQNR {layer.sqnr_db:.1f} dB): {layer.kept_float}")
        worst = sorted((la for la in self.layers if not la.kept_float), key=lambda la: la.sqnr_db)[:3]
        if worst:
            lines.append("  worst quantized: " + ", ".join(f"{la.module} {la.sqnr_db:.1f} dB" for la in worst))
        lines.extend(f"  note: {n}" for n in self.notes)
        return lines

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())
