"""Kernels per target: ``cpu/`` (oneDNN / ATen int8 GEMMs)."""
