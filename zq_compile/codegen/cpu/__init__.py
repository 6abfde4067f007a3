"""CPU int8 GEMM kernels and the run-time choice between them."""
