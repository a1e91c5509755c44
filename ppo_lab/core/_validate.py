"""Argument checks shared by the core functions (not part of the public API).

Every check raises ``ValueError`` whose message starts with the argument's name, so a reader
who passes a wrong tensor sees which one (DESIGN.md, "Core API contract").
"""

from __future__ import annotations

import math

import torch

HALF = (torch.float16, torch.bfloat16)  # lifted to float32 by compute_dtype


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a core function computes and returns in.

    float32/float64 inputs keep their (promoted) dtype; 16-bit floats are lifted to float32, so
    statistics of bf16/fp16 tensors are never accumulated in 16 bits.
    """
    dtype = torch.float32
    for t in tensors:
        if t.dtype != dtype and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def float_tensor(x, name: str, dtype: torch.dtype) -> torch.Tensor:
    x = tensor(x, name)
    if x.dtype == dtype:  # already the (real float) compute dtype: nothing to check or cast
        return x
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: expected a real float tensor, got {x.dtype}")
    return x.to(dtype)


def same_shape(shape: torch.Size, ref_name: str, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.shape != shape:
            raise ValueError(
                f"{name}: shape {tuple(t.shape)} does not match {ref_name} shape {tuple(shape)}"
            )


def alike(**named) -> dict[str, torch.Tensor]:
    """Check that each named argument is a tensor with the first one's shape (named in errors)."""
    for name, t in named.items():
        tensor(t, name)
    first_name = next(iter(named))
    same_shape(named[first_name].shape, first_name, **named)
    return named


def floats(**named) -> list[torch.Tensor]:
    """``alike`` tensors cast to their common compute dtype (see ``compute_dtype``)."""
    named = alike(**named)
    tensors = list(named.values())
    if all(t.dtype == torch.float32 for t in tensors):  # the common case: nothing to cast
        return tensors
    dtype = compute_dtype(*tensors)
    return [float_tensor(t, name, dtype) for name, t in named.items()]


def time_major(x: torch.Tensor, name: str) -> None:
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected shape [T, ...] with T >= 1, got {tuple(x.shape)}")


def flags(x, name: str, shape: torch.Size, ref_name: str) -> torch.Tensor:
    """A bool or {0, 1} tensor of ``shape`` (a mask, ``terminated``, ...) as a bool tensor."""
    x = tensor(x, name)
    same_shape(shape, ref_name, **{name: x})
    if x.dtype == torch.bool:
        return x
    if x.is_complex() or not ((x == 0) | (x == 1)).all():
        raise ValueError(f"{name}: expected bool or {{0, 1}} values")
    return x != 0


def keep_mask(mask, shape: torch.Size, ref_name: str, name: str = "mask") -> torch.Tensor | None:
    """Validated bool mask (``None`` stays ``None``: every element is kept)."""
    if mask is None:
        return None
    keep = flags(mask, name, shape, ref_name)
    if not keep.any():
        raise ValueError(f"{name}: no element is kept, so the mean is undefined")
    return keep


def finite(x: torch.Tensor, name: str, where: torch.Tensor | None = None) -> None:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad &= where
    if bad.any():
        raise ValueError(f"{name}: contains NaN or inf")


def number(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def unit_interval(value, name: str) -> float:
    value = number(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must lie in [0, 1], got {value}")
    return value


def positive(value, name: str) -> float:
    value = number(value, name)
    if value <= 0.0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    return value


def non_negative(value, name: str) -> float:
    value = number(value, name)
    if value < 0.0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value
