"""Choose, once, between the Triton kernels and their torch references.

`AUTOINTERP_KERNELS` (read at import) forces the choice:
  auto   (default) Triton for CUDA tensors when Triton imports, else torch
  triton           always Triton (CPU tensors need TRITON_INTERPRET=1)
  torch            always the torch reference
"""

from __future__ import annotations

import functools
import os

from torch import Tensor

MODES = ("auto", "triton", "torch")
MODE = os.environ.get("AUTOINTERP_KERNELS", "auto").strip().lower() or "auto"


class KernelArgError(ValueError):
    """A kernel was called with tensors of the wrong shape, dtype, device or layout."""


@functools.cache
def triton_available() -> bool:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 -- ImportError, or a broken install failing to load its backends
        return False
    return True


def use_triton(tensor: Tensor) -> bool:
    """True if the op on `tensor` should run the Triton launcher."""
    if MODE not in MODES:
        raise KernelArgError(f"AUTOINTERP_KERNELS={MODE!r} is not one of {'|'.join(MODES)} -- unset it or pick one of those")
    if MODE == "torch":
        return False
    if MODE == "triton":
        if not triton_available():
            raise KernelArgError("AUTOINTERP_KERNELS=triton but triton does not import -- install triton or set AUTOINTERP_KERNELS=torch")
        return True
    return tensor.is_cuda and triton_available()


def check(cond: bool, msg: str) -> None:
    """Raise KernelArgError(msg) unless cond: the launchers' one-line argument checks."""
    if not cond:
        raise KernelArgError(msg)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run on CPU tensors through numpy)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class _NoTriton:
    """Stands in for `triton` and `triton.language` when Triton is not installed.

    The kernel files then still import (their torch references work); decorators
    return the function unchanged and anything else raises one clear line.
    """

    class constexpr:  # annotations and module-level constants only
        def __init__(self, value=None):
            self.value = value

    def jit(self, fn=None, **_):
        return fn if fn is not None else (lambda f: f)

    def autotune(self, *_, **__):
        return lambda fn: fn

    def __getattr__(self, name):
        raise KernelArgError("triton is not installed -- pip install 'autointerp-engine[kernels]' or set AUTOINTERP_KERNELS=torch")


if triton_available():
    import triton
    import triton.language as tl
else:
    triton = tl = _NoTriton()
