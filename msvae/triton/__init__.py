"""Triton kernels (GPU path; run on CPU tensors by the interpreter under TRITON_INTERPRET=1)."""
