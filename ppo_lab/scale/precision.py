"""Mixed precision (§8): bf16 or fp16 matmuls, float32 everything that decides the update.

``Precision("bf16")`` runs the model's forward under ``torch.autocast(dtype=torch.bfloat16)``:
matrix multiplies in bf16 (half the bytes, 2–16× the throughput of float32 on tensor-core GPUs),
while the master weights, their gradients and Adam's moments stay float32. bf16 keeps float32's
8-bit exponent, so gradients neither underflow nor overflow and no loss scaling is needed.

``Precision("fp16")`` has a 5-bit exponent: gradients below ~6·10⁻⁸ flush to zero. The loss is
multiplied by a large scale S before ``backward`` (``torch.amp.GradScaler``), the gradients
divided by S before clipping and the step, and a step whose gradients hold an inf or NaN is
*skipped* (S halves); after 2000 clean steps S doubles.

What stays float32 whatever the compute dtype: log-probabilities (the logits are sliced, then
converted before the log-softmax — ``ppo_lab.llm.logprobs``), values (``ValueHead`` and
``token_scalars`` return float32), KL, rewards, advantages, returns and every loss. The trainer
calls the model inside :meth:`Precision.autocast` and assembles the loss outside it, from float32
tensors. A ratio exp(log π − log π_old) computed from bf16 log-probs (≈ 3 significant digits)
would clip on rounding noise alone.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
from torch import nn

__all__ = ["DTYPES", "DType", "Precision"]

DType = Literal["fp32", "bf16", "fp16"]  # the --dtype choices of every trainer
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """The compute dtype of the forward pass and, for fp16, the gradient scaler (§8).

    Args:
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (config ``--dtype``).
        device: the device type the model runs on (``"cpu"`` or ``"cuda"``; a ``torch.device``
            is accepted). ``GradScaler("cpu")`` works, so fp16 is testable on a CPU.

    Use::

        precision = Precision(config.dtype, device)
        with precision.autocast():
            logprobs = response_logprobs(policy, batch, spec).logprobs  # float32 [B, T]
        loss, stats = ppo_loss(logprobs=logprobs, ...)                    # float32
        precision.backward(loss)
        stepped, grad_norm = precision.step(optimizer, policy.parameters(), max_grad_norm=1.0)
    """

    def __init__(self, dtype: str = "fp32", device: str | torch.device = "cpu"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.compute_dtype = DTYPES[dtype]
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == "fp16")

    @property
    def enabled(self) -> bool:
        """Whether the forward runs in a 16-bit dtype."""
        return self.dtype != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in the compute dtype (a no-op context for fp32). Wrap model calls only."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the scaler for fp16 (``(S · loss).backward()``)."""
        if loss.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"loss: expected float32 (assemble losses outside autocast), got {loss.dtype}")
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters=None, max_grad_norm: float | None = None
             ) -> tuple[bool, float | None]:
        """Unscale, clip, step and update the scale; return ``(stepped, grad_norm)``.

        With fp16 the gradients are divided by S *before* clipping (the norm must be of the true
        gradients) and a step whose gradients are not all finite is skipped — the weights and
        Adam's moments stay as they were. With ``parameters`` the global gradient norm is
        computed (and clipped to ``max_grad_norm`` unless it is None) and returned.
        """
        grad_norm = None
        if parameters is not None:
            self.scaler.unscale_(optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(
                [p for p in parameters if p.grad is not None],
                max_grad_norm if max_grad_norm is not None else math.inf))
        before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(optimizer)
        self.scaler.update()
        # The scale shrinks only when the step found an inf/NaN gradient and was skipped.
        return before is None or self.scaler.get_scale() >= before, grad_norm

    def state_dict(self) -> dict:
        """The scaler's state (scale, growth tracker), for checkpoints; empty unless fp16."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
