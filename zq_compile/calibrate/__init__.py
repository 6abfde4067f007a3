"""Calibration before compile (package marker; the public ``zq_compile.calibrate`` lives here
once the smoothing statistics land). LKD: ``zq_compile.calibrate.lkd.run_lkd``."""
