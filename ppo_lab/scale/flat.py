"""One contiguous buffer for all of a model's parameters, and one for their gradients.

A small network has many small parameter tensors (the CartPole actor-critic: 8, holding 9k
numbers), and each optimiser step, gradient clip and ``zero_grad`` loops over them in Python,
launching a few kernels per tensor. When every parameter is a *view* into one flat tensor and
every gradient a view into one flat gradient, the three become one or two kernels each:

- ``backward`` accumulates each parameter's gradient in place into its view of ``grad``
  (autograd adds into an existing ``.grad`` instead of replacing it);
- the optimiser is built on the single flat parameter, so Adam is one fused kernel;
- clipping is one norm and one multiply; zeroing is one fill.

The same idea, at scale: DDP's ``gradient_as_bucket_view``, Megatron-LM's contiguous gradient
buffer and FSDP's ``FlatParameter``. The model itself does not change: its parameters keep their
names, shapes and ``state_dict``; only their storage moves. On the CartPole actor-critic,
gradient clipping plus Adam drop from 36 ATen operators to 13 (counted in exercise 1 of the book's
engineering appendix, "小网络为什么慢", which measures where a small network's time goes).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FlatParameters"]


class FlatParameters:
    """Re-home ``module``'s trainable parameters (and gradients) into two flat buffers.

    Build the optimiser on :attr:`param` (``torch.optim.Adam([flat.param], ...)``), call
    :meth:`zero_grad` and :meth:`clip_grad_norm_` instead of the optimiser's and
    ``torch.nn.utils``' versions, and do not move the module to another device afterwards
    (``.to`` would give its parameters fresh storage, no longer in the buffer).

    Args:
        module: its parameters with ``requires_grad`` must share one device and dtype.
    """

    def __init__(self, module: nn.Module):
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("module: has no trainable parameters")
        kinds = {(p.device, p.dtype) for p in params}
        if len(kinds) > 1:
            raise ValueError(f"module: parameters on several devices/dtypes {sorted(map(str, kinds))}")
        self.param = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))  # [P]
        self.param.grad = torch.zeros_like(self.param)  # [P]
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.param.data[offset : offset + n].view_as(p)
            p.grad = self.param.grad[offset : offset + n].view_as(p)
            offset += n

    @property
    def grad(self) -> torch.Tensor:
        """All gradients, concatenated in ``module.parameters()`` order: ``[P]``."""
        return self.param.grad

    def zero_grad(self) -> None:
        """Set every gradient to 0 in place (never to None: that would detach the views)."""
        self.param.grad.zero_()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float | None) -> torch.Tensor:
        """Scale the gradients so their global L2 norm is at most ``max_norm`` (None: only measure).

        The same rule as ``torch.nn.utils.clip_grad_norm_``: multiply by
        ``min(1, max_norm / (norm + 1e-6))``. Returns the norm before clipping (a 0-dim tensor).
        """
        norm = torch.linalg.vector_norm(self.param.grad)
        if max_norm is not None:
            self.param.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm
