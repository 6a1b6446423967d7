"""PyTorch and devices for the U-Net: imported lazily, with an actionable error.

``import nx47_pipeline.unet`` does not import torch.  Every function that
needs it calls :func:`require_torch`, which raises :class:`UNetUnavailable`
with an actionable message when PyTorch is not installed.
"""

from __future__ import annotations

import os
import sys

#: Name of the rolling checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "last.pt"

TORCH_HINT = (
    "the U-Net stage needs PyTorch: pip install torch==2.13.0 (CPU build) or "
    "use a Kaggle GPU image that ships torch; or run with --no-unet"
)


_INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
_READY: list[bool] = []  # non-empty once torch and torch._dynamo were imported here


class UNetUnavailable(ImportError):
    """PyTorch (or the requested device) is not available for the U-Net."""


def require_torch():
    """Import and return the ``torch`` module.

    Returns
    -------
    module
        The imported ``torch`` module.

    Raises
    ------
    UNetUnavailable
        When PyTorch cannot be imported; the message says how to install it
        or how to run without the U-Net.
    """
    if "torch" in sys.modules and sys.modules["torch"] is not None and _READY:
        return sys.modules["torch"]
    # torch._dynamo (imported by the optimisers' first step) writes
    # TORCHINDUCTOR_CACHE_DIR into os.environ; a run inside a notebook kernel
    # must leave the kernel's environment as it found it, so the import
    # happens here, once, and that variable is put back
    had = os.environ.get(_INDUCTOR_ENV)
    try:
        import torch  # noqa: PLC0415 - lazy on purpose
        import torch._dynamo  # noqa: F401, PLC0415
    except ImportError as exc:
        raise UNetUnavailable(f"{TORCH_HINT} (import failed: {exc})") from exc
    finally:
        if had is None:
            os.environ.pop(_INDUCTOR_ENV, None)
        else:
            os.environ[_INDUCTOR_ENV] = had
    _READY.append(True)
    return torch


def torch_available() -> bool:
    """Whether PyTorch can be imported (never raises)."""
    try:
        require_torch()
    except UNetUnavailable:
        return False
    return True


def cuda_available() -> bool:
    """Whether PyTorch is importable and sees a CUDA device (never raises)."""
    try:
        torch = require_torch()
    except UNetUnavailable:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver must not crash the planner
        return False


def resolve_device(spec: str = "auto") -> str:
    """Turn a device specification into a torch device string.

    Parameters
    ----------
    spec : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:<index>"``.

    Returns
    -------
    str
        ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Raises
    ------
    ValueError
        When ``spec`` is not one of the forms above, or names CUDA on a
        machine without it.
    """
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {spec!r}")
    s = spec.strip().lower()
    if s == "auto":
        return "cuda" if cuda_available() else "cpu"
    if s == "cpu":
        return "cpu"
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not cuda_available():
            raise ValueError(
                f"device={spec!r} was requested but CUDA is not available on this "
                "machine; use device='auto' or 'cpu'"
            )
        if ":" in s:
            torch = require_torch()
            index = int(s[5:])
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) present"
                )
        return s
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {spec!r}")

