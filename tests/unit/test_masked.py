"""Masked statistics: loop twins, NaN/inf at dropped positions, empty masks, dtypes."""

import math

import pytest
import torch
from core_helpers import core_settings, dtypes, generator, random_mask, seeds, shapes_2d, shapes_2d_var, tol
from hypothesis import given, strategies as st
from torch.testing import assert_close

from ppo_lab import explained_variance, masked_mean, masked_var, masked_whiten
from ppo_lab.core import reference as ref


def poisoned(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN and inf written at dropped positions: they must never matter."""
    x = x.clone()
    dropped = ~mask
    x[dropped] = torch.where(torch.arange(int(dropped.sum())) % 2 == 0, math.nan, math.inf).to(x.dtype)
    return x


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds, dim=st.sampled_from([None, 0, 1, -1, (0, 1)]))
def test_masked_mean_matches_loop(shape, dtype, seed, dim):
    gen = generator(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    mask = torch.ones(shape, dtype=torch.bool) if dim not in (None, (0, 1)) else random_mask(shape, gen)
    out = masked_mean(x=poisoned(x, mask), mask=mask, dim=dim)
    assert out.dtype == dtype
    assert_close(out, ref.masked_mean(x, mask, dim), **tol(dtype))


def test_masked_mean_per_row_and_float_mask():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, math.nan]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # {0, 1} floats are a valid mask
    assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 5.0]))
    assert_close(masked_mean(x, mask), torch.tensor(8.0 / 3))
    assert_close(masked_mean(x[:, :2], None, dim=0), torch.tensor([2.5, 3.5]))


@core_settings
@given(shape=shapes_2d_var, dtype=dtypes, seed=seeds, unbiased=st.booleans())
def test_masked_var_matches_torch_var_of_kept_elements(shape, dtype, seed, unbiased):
    gen = generator(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    mask = random_mask(shape, gen)
    out = masked_var(poisoned(x, mask), mask, unbiased=unbiased)
    assert_close(out, torch.var(x[mask], correction=int(unbiased)), **tol(dtype))
    assert_close(out, ref.masked_var(x, mask, unbiased), **tol(dtype))


@core_settings
@given(shape=shapes_2d_var, dtype=dtypes, seed=seeds, shift_mean=st.booleans())
def test_masked_whiten_matches_loop(shape, dtype, seed, shift_mean):
    gen = generator(seed)
    x = 3 + 2 * torch.randn(shape, generator=gen, dtype=dtype)
    mask = random_mask(shape, gen)
    out = masked_whiten(poisoned(x, mask), mask, shift_mean=shift_mean)
    assert out.dtype == dtype
    assert (out[~mask] == 0).all()
    assert_close(out, ref.masked_whiten(x, mask, shift_mean), **tol(dtype))


def test_masked_whiten_moments():
    x = torch.arange(10, dtype=torch.float64) ** 2
    mask = torch.arange(10) % 3 != 0
    white = masked_whiten(x, mask)
    assert_close(white[mask].mean(), torch.tensor(0.0, dtype=torch.float64))
    assert_close(white[mask].var(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=0)
    scaled = masked_whiten(x, mask, shift_mean=False)  # TRL: only the scale changes
    assert_close(scaled[mask].mean(), x[mask].mean())
    assert_close(scaled[mask].var(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("fn", [masked_mean, masked_var, masked_whiten])
def test_gradients_at_dropped_positions_are_zero_even_for_nan(fn):
    gen = generator(7)
    mask = random_mask((6, 4), gen)
    x = poisoned(torch.randn(6, 4, generator=gen, dtype=torch.float64), mask).requires_grad_(True)
    out = fn(x, mask)
    (grad,) = torch.autograd.grad(out.sum() if out.dim() else out, x)
    assert torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all()


def test_masked_mean_gradient_is_one_over_count():
    x = torch.zeros(5, requires_grad=True)
    mask = torch.tensor([True, True, False, True, False])
    masked_mean(x, mask).backward()
    assert_close(x.grad, mask.float() / 3)


def test_half_precision_statistics_are_float32():
    gen = generator(8)
    x64 = torch.randn(50, generator=gen, dtype=torch.float64)
    mask = random_mask((50,), gen)
    for half in (torch.bfloat16, torch.float16):
        x = x64.to(half)
        for out, expected in [
            (masked_mean(x, mask), ref.masked_mean(x, mask)),
            (masked_var(x, mask), ref.masked_var(x, mask)),
            (masked_whiten(x, mask), ref.masked_whiten(x, mask)),
        ]:
            assert out.dtype == torch.float32
            assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: masked_mean(torch.ones(3), torch.zeros(3, dtype=torch.bool)), "^mask: no element"),
        (lambda: masked_mean(torch.ones(2, 2), torch.tensor([[True, True], [False, False]]), dim=1), "^mask: a slice"),
        (lambda: masked_mean(torch.ones(3), torch.ones(4, dtype=torch.bool)), "^mask: shape"),
        (lambda: masked_mean(torch.ones(3), torch.tensor([0, 1, 2])), "^mask: expected bool"),
        (lambda: masked_mean(torch.ones(0), None), "^x: is empty"),
        (lambda: masked_mean([1.0, 2.0], None), "^x: expected a torch.Tensor"),
        (lambda: masked_var(torch.ones(3), torch.tensor([True, False, False])), "^mask: the unbiased variance"),
        (lambda: masked_whiten(torch.ones(3), torch.tensor([False, True, False])), "^mask: the unbiased variance"),
        (lambda: masked_var(torch.ones(1), None), "^x: the unbiased variance"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_masked_var_of_one_element_biased_is_zero():
    assert masked_var(torch.tensor([5.0, math.nan]), torch.tensor([True, False]), unbiased=False) == 0


# --- explained_variance -------------------------------------------------------------------------


def test_explained_variance_by_hand():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(torch.full((4,), 2.5), returns) == 0.0  # the mean: a constant
    assert explained_variance(-returns, returns) < 0
    assert math.isnan(explained_variance(returns, torch.ones(4)))  # Var[returns] = 0: undefined


@core_settings
@given(shape=shapes_2d, dtype=dtypes, seed=seeds)
def test_explained_variance_matches_loop(shape, dtype, seed):
    gen = generator(seed)
    values, returns = torch.randn((2, *shape), generator=gen, dtype=dtype)
    mask = random_mask(shape, gen)
    out = explained_variance(poisoned(values, mask), returns, mask=mask)
    expected = ref.explained_variance(values, returns, mask)
    if math.isnan(expected):
        assert math.isnan(out)
    else:
        assert_close(out, expected, **tol(dtype))
