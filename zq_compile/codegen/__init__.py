"""Kernels per target: ``cpu/`` (oneDNN / ATen int8 GEMMs), ``triton/`` (CUDA; CPU tensors only
under the Triton interpreter)."""
