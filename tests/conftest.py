"""Shared test setup.

Without a GPU the Triton kernels run in Triton's interpreter, which must be
switched on before triton is first imported: do it here, before any test module
imports wrn_fast.kernels. (`import torch` does not import triton.)
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
