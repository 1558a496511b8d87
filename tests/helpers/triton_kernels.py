"""Shared setup of the kernel tests (tests/kernels/test_kernels_*.py import it first): kernel modules built
for this session's mode, the device they run on, and dense references.

Without CUDA the Triton launchers run in the interpreter on CPU tensors. Triton
reads TRITON_INTERPRET when a kernel is decorated, so this module sets it before
anything here imports triton, and a kernel module imported earlier in the session
(by engine code, before this was set) is reloaded by `interpreted`.
"""

import importlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def interpreted(module):
    """The kernel module with kernels built for this session's mode (reloaded if stale)."""
    from kernels.dispatch import interpreting, triton_available

    if triton_available():
        kernel = next(v for k, v in vars(module).items() if k.endswith("_kernel"))
        if (type(kernel).__name__ == "InterpretedFunction") != interpreting():
            module = importlib.reload(module)
    return module


def densify(tok, lat, val, n_rows: int, n_cols: int) -> torch.Tensor:
    """[n_rows, n_cols] float32 with val at (tok, lat) for tok >= 0; duplicates would add up."""
    out = torch.zeros(n_rows, n_cols, dtype=torch.float32, device=val.device)
    ok = tok >= 0
    out.index_put_((tok[ok], lat[ok]), val[ok].float(), accumulate=True)
    return out
