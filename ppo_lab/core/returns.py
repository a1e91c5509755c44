"""Discounted returns (reward-to-go), §1.3, and the backward recursion GAE reuses (§4.6).

Time is dim 0: toy-RL tensors are ``[T, N]`` (steps × parallel envs), and any trailing shape
works. ``episode_ends[t]`` is True where step ``t`` is the last step of an episode (terminated
or truncated), so nothing flows back across it: a GAE over concatenated trajectories leaks across episode
ends (errata 3).
"""

from __future__ import annotations

import torch

from . import _validate as check


def backward_discounted_sum(x: torch.Tensor, discounts: torch.Tensor) -> torch.Tensor:
    """``y_t = x_t + discounts_t · y_{t+1}`` with ``y_T = 0``; shapes ``[T, ...]``. §4.6.

    The recursion of Eq. (1.9) (discounts γ(1 − end_t)) and of Eq. (4.6)/(4.9) (γλ(1 − end_t)),
    solved by a log-depth scan instead of T sequential steps. Step t is the affine map
    f_t(y) = x_t + c_t·y, and y_t = f_t ∘ f_{t+1} ∘ … ∘ f_{T−1}(0). Composing two maps gives
    another one, (a, b) ∘ (a', b') = (a + b·a', b·b') (Eq. (4.10)), and composition is
    associative, so the T maps can be combined as a balanced tree (Blelloch 1990):

    - up-sweep, strides s = 1, 2, 4, …: every position p that is a multiple of 2s absorbs its
      neighbour p + s, so (a_p, b_p) becomes the composed map of the window [p, p + 2s);
    - down-sweep, strides back down to 1: position p = s, 3s, 5s, … holds the window [p, p + s)
      and p + s is already final, so y_p = a_p + b_p·y_{p+s}.

    2⌈log₂T⌉ − 1 rounds, each one or two fused in-place ops on a strided view of the whole
    ``[T, ...]`` tensor: O(T·N) work in all, about 3⌈log₂T⌉ op calls instead of the loop's T.
    Numerically stable: the b's are products of discounts in [0, 1], so they only shrink —
    nothing is divided, no cumulative product is inverted, nothing overflows (T = 100 000 in
    float32 is fine). Computes in the input dtype for float32/float64, in float32 for 16-bit
    inputs. No argument checks: callers validate (``discounts`` has ``x``'s shape). Autograd
    flows through it: the gradient of this backward recursion is a forward recursion with the
    same discounts, solved by the same scan.
    """
    dtype = check.compute_dtype(x, discounts)
    x, discounts = x.to(dtype), discounts.to(dtype)
    if torch.is_grad_enabled() and (x.requires_grad or discounts.requires_grad):
        return _BackwardDiscountedSum.apply(x, discounts)
    T = x.shape[0]
    a = x.clone(memory_format=torch.contiguous_format)  # (T, ...) a_p, becomes y_p in place
    b = discounts.clone(memory_format=torch.contiguous_format)  # (T, ...) b_p
    s = 1
    while s < T:  # up-sweep: p = 0, 2s, 4s, … with p + s < T absorbs p + s
        b_left = b[0 : T - s : 2 * s]  # (⌈(T − s)/2s⌉, ...) b_p
        a[0 : T - s : 2 * s].addcmul_(b_left, a[s :: 2 * s])  # a_p += b_p·a_{p+s}
        if 2 * s < T:  # the last round's product is never read
            b_left.mul_(b[s :: 2 * s])  # b_p *= b_{p+s}
        s *= 2
    s //= 2  # the up-sweep's last stride: it made position 0 final
    while s > 1:  # down-sweep, s = …, 4, 2, 1: p = s, 3s, 5s, … with p + s < T
        s //= 2
        a[s : T - s : 2 * s].addcmul_(b[s : T - s : 2 * s], a[2 * s :: 2 * s])  # y_p = a_p + b_p·y_{p+s}
    return a


class _BackwardDiscountedSum(torch.autograd.Function):
    """Autograd for ``backward_discounted_sum`` (its in-place scan cannot be traced).

    With g = ∂L/∂y: ∂L/∂x_t = g_t + c_{t−1}·∂L/∂x_{t−1} (a recursion forward in time, i.e. the
    same recursion on the time-reversed tensors), and ∂L/∂c_t = ∂L/∂x_t · y_{t+1}.
    """

    @staticmethod
    def forward(ctx, x, discounts):
        y = backward_discounted_sum(x, discounts)  # grad mode is off inside forward: the scan
        ctx.save_for_backward(discounts, y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        discounts, y = ctx.saved_tensors
        previous = torch.cat([torch.zeros_like(discounts[:1]), discounts[:-1]])  # c_{t−1}, (T, ...)
        grad_x = backward_discounted_sum(grad_y.flip(0), previous.flip(0)).flip(0)  # (T, ...)
        grad_discounts = None
        if ctx.needs_input_grad[1]:
            grad_discounts = grad_x * torch.cat([y[1:], torch.zeros_like(y[:1])])  # ∂L/∂x_t · y_{t+1}
        return grad_x, grad_discounts


def discounted_returns(rewards: torch.Tensor, episode_ends: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. (1.9), §1.3: ``G_t = r_t + γ (1 − end_t) G_{t+1}``, with ``G_T = 0`` past the last step.

    r_t ↔ ``rewards``, end_t ↔ ``episode_ends`` (bool or {0, 1}), γ ↔ ``gamma`` ∈ [0, 1].
    Shapes: ``[T, N]`` (or ``[T, ...]``) in and out. No bootstrap: a rollout cut mid-episode
    counts only the rewards it saw (use ``gae_advantages`` with ``gae_lambda=1`` to bootstrap).
    """
    gamma = check.unit_interval(gamma, "gamma")
    (rewards,) = check.floats(rewards=rewards)
    check.time_major(rewards, "rewards")
    ends = check.flags(episode_ends, "episode_ends", rewards.shape, "rewards")
    check.finite(rewards, "rewards")
    return backward_discounted_sum(rewards, torch.full_like(rewards, gamma).masked_fill_(ends, 0.0))
