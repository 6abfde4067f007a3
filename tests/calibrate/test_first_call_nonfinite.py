"""A first call whose inputs hold NaN/Inf rows calibrates on its finite rows only: the NaN row
must not set every channel's max |X| (smoothing) or the error figures (the keep_float policy)."""

import math

import torch
import torch.nn as nn

import zq_compile
from zq_compile.config import ZeroQuantConfig
from zq_compile.calibrate import stats


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).eval()


def _first_call(model, x):
    torch._dynamo.reset()
    before = len(zq_compile.recent_reports())
    with torch.inference_mode():
        config = ZeroQuantConfig(smooth={"alpha": 0.5})
        out = zq_compile.compile(model, config)(x)
    (report,) = zq_compile.recent_reports()[before:]
    return out, report, [stats.lookup(model[i].weight, stats.signature(config)) for i in (1, 3)]


def test_nan_and_inf_rows_do_not_enter_the_first_call_statistics():
    clean = torch.randn(2, 9, 32)
    clean[..., 5] *= 20  # an outlier channel, so smoothing has something to do
    dirty = torch.cat([clean, torch.full((2, 2, 32), float("nan"))], dim=1)
    dirty[0, -1, 3] = float("inf")
    a, b = _model(), _model()
    _, report_clean, entries_clean = _first_call(a, clean)
    out, report_dirty, entries_dirty = _first_call(b, dirty)
    for ec, ed in zip(entries_clean, entries_dirty):
        assert torch.isfinite(ed.act_absmax).all()
        torch.testing.assert_close(ed.act_absmax, ec.act_absmax)
        assert math.isfinite(ed.sqnr_db) and ed.sqnr_db == ec.sqnr_db and ed.keep_float == ec.keep_float
    assert report_dirty.calibration.tokens == report_clean.calibration.tokens  # finite rows only
    assert math.isfinite(report_dirty.calibration.model_sqnr_db)
    # and at run time the bad rows stay confined to themselves, as in float
    assert torch.isfinite(out[:, :9]).all() and torch.isnan(out[:, 9:]).any()
