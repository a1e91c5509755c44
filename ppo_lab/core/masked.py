"""Masked statistics: the means, variances and whitening every PPO loss is built from.

§6 (padding / EOS masks) and §7 (whitening) use them on ``[B, T]`` tensors; chapters 3–5 use the
same functions on ``[T, N]`` tensors, where the mask is simply ``None`` or all True.

A mask keeps what is True (``response_mask``: True = counted). A masked mean is
``sum(where(mask, x, 0)) / count(mask)`` over all kept elements, so values at dropped positions,
even NaN or inf, never reach the result *or its gradient*: every function zeroes dropped
positions before any arithmetic (``where`` alone would still send ``0 * NaN`` gradients back).
"""

from __future__ import annotations

import torch

from . import _validate as check

WHITEN_EPS = 1e-8  # added to the variance before the square root (TRL's convention)


# --- helpers for the other core modules: arguments already validated ------------------------


def zero_dropped(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``x`` with dropped positions set to 0 (``keep=None`` keeps everything)."""
    return x if keep is None else torch.where(keep, x, 0)


def mean_kept(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` over kept elements; ``x`` must already be zero where ``keep`` is False."""
    return x.mean() if keep is None else x.sum() / keep.sum()


def _mean_var(x: torch.Tensor, keep: torch.Tensor | None, unbiased: bool):
    n = x.numel() if keep is None else int(keep.sum())
    if n < 2 and unbiased:
        name = "x" if keep is None else "mask"
        raise ValueError(f"{name}: the unbiased variance needs at least 2 kept elements, got {n}")
    mean = mean_kept(x, keep)
    centered = zero_dropped(x - mean, keep)
    var = centered.square().sum() / (n - 1 if unbiased else n)
    return mean, var


def _prepare(x, mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    (x,) = check.floats(x=x)
    keep = check.keep_mask(mask, x.shape, "x")
    if keep is None and x.numel() == 0:
        raise ValueError("x: is empty, so the mean is undefined")
    return zero_dropped(x, keep), keep


# --- public API ------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim=None) -> torch.Tensor:
    """Mean of ``x`` over the elements where ``mask`` is True.

    ``sum(where(mask, x, 0)) / count(mask)`` over all kept elements, or per slice when ``dim``
    (an int or a tuple of ints) is given. ``mask=None`` keeps everything. A slice with no kept
    element is a ``ValueError``. Shapes: ``x`` and ``mask`` alike, e.g. ``[B, T]``.
    """
    x, keep = _prepare(x, mask)
    if dim is None:
        return mean_kept(x, keep)
    if keep is None:
        return x.mean(dim)
    count = keep.sum(dim)
    if (count == 0).any():
        raise ValueError(f"mask: a slice along dim={dim} has no kept element")
    return x.sum(dim) / count


def masked_var(x: torch.Tensor, mask: torch.Tensor | None, unbiased: bool = True) -> torch.Tensor:
    """Variance of the kept elements of ``x``; Bessel-corrected (``n − 1``) when ``unbiased``.

    The unbiased variance of fewer than 2 kept elements is a ``ValueError``.
    """
    x, keep = _prepare(x, mask)
    return _mean_var(x, keep, unbiased)[1]


def masked_whiten(x: torch.Tensor, mask: torch.Tensor | None, shift_mean: bool = True) -> torch.Tensor:
    """``(x − mean) / sqrt(var + 1e-8)`` over the kept elements; 0 where ``mask`` is False.

    Uses the unbiased masked variance. With ``shift_mean=False`` the mean is added back, so only
    the scale changes (TRL's convention for whitening rewards). §7 (whitening); PPO detail
    "advantage normalisation" (Andrychowicz et al. 2021, §3.5) calls it per minibatch.
    """
    x, keep = _prepare(x, mask)
    mean, var = _mean_var(x, keep, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return zero_dropped(whitened, keep)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 − Var[returns − values] / Var[returns]`` over the kept elements (a 0-dim tensor).

    1 is a perfect value function, 0 predicts no better than a constant, < 0 is worse than a
    constant. NaN when the returns have zero variance (SB3's convention: undefined, not 0).
    Biased variances, so one kept element is allowed (and gives NaN).
    """
    values, returns = check.floats(values=values, returns=returns)
    keep = check.keep_mask(mask, values.shape, "values")
    values, returns = zero_dropped(values, keep), zero_dropped(returns, keep)
    var_returns = _mean_var(returns, keep, unbiased=False)[1]
    var_residual = _mean_var(returns - values, keep, unbiased=False)[1]
    return torch.where(var_returns == 0, torch.nan, 1 - var_residual / var_returns)
