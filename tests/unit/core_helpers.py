"""Shared strategies for the core unit tests: random shapes, dtypes and masks, seeded.

(A plain module, not conftest.py: its settings apply only to the tests that import them.)
"""

import torch
from hypothesis import settings, strategies as st

core_settings = settings(deadline=None, max_examples=40, derandomize=True)

FLOAT_DTYPES = [torch.float32, torch.float64]
dtypes = st.sampled_from(FLOAT_DTYPES)
seeds = st.integers(0, 2**31 - 1)
shapes_2d = st.tuples(st.integers(1, 12), st.integers(1, 5))  # [T, N] or [B, T]
shapes_2d_var = shapes_2d.filter(lambda s: s[0] * s[1] >= 2)  # room for an unbiased variance


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_mask(shape, gen, p_keep=0.7) -> torch.Tensor:
    """A random bool mask with at least two kept elements (a variance needs two)."""
    mask = torch.rand(shape, generator=gen) < p_keep
    flat = mask.view(-1)
    flat[: min(2, flat.numel())] = True
    return mask


def tol(dtype):
    """assert_close tolerances for a fast (vectorised) vs loop (float64 Python) comparison."""
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
