"""Input validation shared by the routing layers.

Every check raises an error that names the argument, what was expected and what was received.
Finite-value checks cost a reduction over the input; switch them off in hot loops with
:func:`skip_checks` (a context manager) or :func:`set_checks_enabled`.

Example:
    >>> import torch
    >>> from heinsen_routing.validation import check_floating, skip_checks
    >>> check_floating("x", torch.zeros(2, 3)).shape          # returns the tensor it checked
    torch.Size([2, 3])
    >>> check_floating("x", torch.zeros(2, dtype=torch.long))
    Traceback (most recent call last):
    ...
    TypeError: x: expected a floating-point tensor, got dtype torch.int64
    >>> with skip_checks():
    ...     pass  # the layers skip their NaN/inf scans here
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

_CHECKS_ENABLED = True


def set_checks_enabled(enabled: bool) -> None:
    """Globally enable or disable the (cheap but not free) non-finite value checks."""
    global _CHECKS_ENABLED
    _CHECKS_ENABLED = bool(enabled)


def is_compiling() -> bool:
    """True while torch.compile or torch.export (e.g. for ONNX) traces the code: data-dependent Python
    branches (``if tensor.any()``) must not run then."""
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    compiling = hasattr(compiler, "is_compiling") and compiler.is_compiling()
    exporting = hasattr(compiler, "is_exporting") and compiler.is_exporting()
    return bool(compiling or exporting)


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for device types without autocast (e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def checks_enabled() -> bool:
    """Whether non-finite value checks run (they never run while tracing/compiling)."""
    return _CHECKS_ENABLED and not is_compiling()


@contextlib.contextmanager
def skip_checks() -> Iterator[None]:
    """Context manager that disables non-finite value checks inside its block."""
    previous = _CHECKS_ENABLED
    set_checks_enabled(False)
    try:
        yield
    finally:
        set_checks_enabled(previous)


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Raise TypeError unless ``value`` is a torch.Tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(name: str, t: object) -> torch.Tensor:
    """Raise TypeError unless ``t`` is a floating-point tensor."""
    t = check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    return t


def check_rank(name: str, t: torch.Tensor, min_rank: int, layout: str) -> None:
    """Raise ValueError unless ``t`` has at least ``min_rank`` dims; ``layout`` documents them."""
    if t.dim() < min_rank:
        raise ValueError(
            f"{name}: expected a tensor of shape {layout} (at least {min_rank} dims), got shape {_shape(t)}"
        )


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str, layout: str) -> None:
    """Raise ValueError unless ``t.shape[dim] == expected``; ``what`` names that dimension."""
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name}: expected {what} = {expected} in shape {layout}, got {t.shape[dim]} (shape {_shape(t)})"
        )


def check_nonempty(name: str, t: torch.Tensor, dim: int, what: str) -> None:
    """Raise ValueError when dimension ``dim`` of ``t`` is empty."""
    if t.shape[dim] == 0:
        raise ValueError(f"{name}: expected at least one {what}, got an empty sequence (shape {_shape(t)})")


def check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, dtype: bool = True) -> None:
    """Raise when ``t`` is on another device than ``ref`` (or, if ``dtype``, has another dtype)."""
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (that of {ref_name}), got {t.device}")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {t.dtype}")


def check_param_device(name: str, t: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    """Raise when ``t`` is not on the device of the layer's parameters."""
    for p in params:
        if p.device != t.device:
            raise ValueError(f"{name}: expected device {p.device} (the layer's parameters), got {t.device}")
        return


def check_finite(name: str, t: torch.Tensor, ignore: torch.Tensor | None = None) -> None:
    """Raise ValueError if ``t`` holds NaN or inf (outside positions where ``ignore`` is True).

    ``ignore`` must broadcast against ``t``. Skipped when checks are disabled.
    """
    if not checks_enabled() or t.device.type == "meta":  # meta tensors hold no values
        return
    if ignore is None:
        # Fast path: one reduction; any NaN/inf makes the sum non-finite. Only a non-finite sum (also a
        # rare overflow of finite values) pays for the element-wise scan below.
        total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
        if bool(torch.isfinite(total)):
            return
    bad = ~torch.isfinite(t)
    if ignore is not None:
        bad = bad & ~ignore
    if bool(bad.any()):
        n_bad = int(bad.sum())
        first = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(
            f"{name}: expected finite values, found {n_bad} NaN/inf entries (first at index {first}); "
            "use heinsen_routing.skip_checks() to disable this check"
        )


def check_bool_mask(name: str, mask: object) -> torch.Tensor:
    """Raise TypeError unless ``mask`` is a boolean tensor (True = ignore)."""
    mask = check_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected a torch.bool tensor (True = ignore), got dtype {mask.dtype}")
    return mask


def check_broadcastable(name: str, t: torch.Tensor, target: Sequence[int], layout: str) -> None:
    """Raise ValueError unless ``t`` broadcasts to ``target`` without growing ``target``."""
    target = list(target)
    ok = t.dim() <= len(target)
    if ok:
        for have, want in zip(reversed(t.shape), reversed(target), strict=False):
            if have not in (1, want):
                ok = False
                break
    if not ok:
        raise ValueError(f"{name}: expected a shape broadcastable to {layout} = {target}, got {_shape(t)}")
