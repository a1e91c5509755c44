"""Slow twins of the core functions: one Python-float loop each, the equations written out.

Same names and signatures as ``ppo_lab.core``; the tests compare every fast function with its
twin here. This module imports no fast module (not even the argument checks), so a bug in the
fast code cannot hide in both. It does no input validation and builds no autograd graph: the
results are fresh tensors in the dtype the fast function returns.
"""

from __future__ import annotations

import math

import torch


def _dtype(*tensors) -> torch.dtype:
    """float32/float64 kept (promoted); 16-bit floats and integers give float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _floats(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.detach().reshape(-1).tolist()]


def _kept(mask, n: int) -> list[bool]:
    return [True] * n if mask is None else [bool(v) for v in mask.reshape(-1).tolist()]


def _columns(x: torch.Tensor) -> list[list[float]]:
    """Time-major ``[T, ...]`` as one list per trailing index (each a list over t)."""
    flat = x.detach().reshape(x.shape[0], -1).tolist()
    return [[float(flat[t][j]) for t in range(len(flat))] for j in range(len(flat[0]) if flat else 0)]


def _from_columns(cols: list[list[float]], like: torch.Tensor, dtype) -> torch.Tensor:
    rows = [[col[t] for col in cols] for t in range(like.shape[0])]
    return torch.tensor(rows, dtype=dtype).reshape(like.shape)


def _scalar(value: float, dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


def _mean(values: list[float], keep: list[bool]) -> float:
    total, count = 0.0, 0
    for v, k in zip(values, keep):
        if k:
            total += v
            count += 1
    return total / count


# --- masked statistics (masked.py) -------------------------------------------------------------


def masked_mean(x, mask, dim=None):
    dtype = _dtype(x)
    if dim is None:
        return _scalar(_mean(_floats(x), _kept(mask, x.numel())), dtype)
    dims = sorted({d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)})
    rest = [d for d in range(x.dim()) if d not in dims]
    perm = rest + dims
    out_shape = [x.shape[d] for d in rest]
    n_rows = math.prod(out_shape)
    xs = x.permute(perm).reshape(n_rows, -1)
    ms = None if mask is None else mask.permute(perm).reshape(n_rows, -1)
    out = []
    for i in range(n_rows):
        row = _floats(xs[i])
        out.append(_mean(row, _kept(None if ms is None else ms[i], len(row))))
    return torch.tensor(out, dtype=dtype).reshape(out_shape)


def _var(values: list[float], keep: list[bool], unbiased: bool) -> float:
    mean = _mean(values, keep)
    n = sum(keep)
    return sum((v - mean) ** 2 for v, k in zip(values, keep) if k) / (n - 1 if unbiased else n)


def masked_var(x, mask, unbiased=True):
    return _scalar(_var(_floats(x), _kept(mask, x.numel()), unbiased), _dtype(x))


def masked_whiten(x, mask, shift_mean=True):
    values, keep = _floats(x), _kept(mask, x.numel())
    mean, var = _mean(values, keep), _var(values, keep, unbiased=True)
    out = []
    for v, k in zip(values, keep):
        w = (v - mean) / math.sqrt(var + 1e-8) + (0.0 if shift_mean else mean)
        out.append(w if k else 0.0)
    return torch.tensor(out, dtype=_dtype(x)).reshape(x.shape)


def explained_variance(values, returns, mask=None):
    v, r, keep = _floats(values), _floats(returns), _kept(mask, values.numel())
    var_r = _var(r, keep, unbiased=False)
    residual = [ri - vi for ri, vi in zip(r, v)]
    ev = math.nan if var_r == 0 else 1 - _var(residual, keep, unbiased=False) / var_r
    return _scalar(ev, _dtype(values, returns))


# --- returns and GAE (returns.py, gae.py) -------------------------------------------------------


def backward_discounted_sum(x, discounts):
    out = []
    for xs, cs in zip(_columns(x), _columns(discounts)):
        y, col = 0.0, [0.0] * len(xs)
        for t in reversed(range(len(xs))):
            y = xs[t] + cs[t] * y
            col[t] = y
        out.append(col)
    return _from_columns(out, x, _dtype(x, discounts))


def discounted_returns(rewards, episode_ends, gamma):
    out = []
    for r, end in zip(_columns(rewards), _columns(episode_ends)):
        g, col = 0.0, [0.0] * len(r)
        for t in reversed(range(len(r))):
            g = r[t] + (0.0 if end[t] else gamma * g)
            col[t] = g
        out.append(col)
    return _from_columns(out, rewards, _dtype(rewards))


def gae_advantages(rewards, values, next_values, terminated, episode_ends, gamma, gae_lambda):
    dtype = _dtype(rewards, values, next_values)
    advantages = []
    columns = zip(*(_columns(t) for t in (rewards, values, next_values, terminated, episode_ends)))
    for r, v, v_next, term, end in columns:
        a, col = 0.0, [0.0] * len(r)
        for t in reversed(range(len(r))):
            bootstrap = 0.0 if term[t] else gamma * v_next[t]
            delta = r[t] + bootstrap - v[t]
            a = delta + (0.0 if end[t] else gamma * gae_lambda * a)
            col[t] = a
        advantages.append(col)
    adv = _from_columns(advantages, rewards, dtype)
    return adv, adv + values.detach().to(dtype)


# --- categorical policies (policy_gradient.py) --------------------------------------------------


def _log_softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    if m == -math.inf:
        return [math.nan] * len(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def logprobs_from_logits(logits, tokens):
    rows = logits.detach().reshape(-1, logits.shape[-1]).tolist()
    picks = tokens.reshape(-1).tolist()
    out = [_log_softmax_row([float(v) for v in row])[a] for row, a in zip(rows, picks)]
    return torch.tensor(out, dtype=_dtype(logits)).reshape(tokens.shape)


def entropy_from_logits(logits):
    out = []
    for row in logits.detach().reshape(-1, logits.shape[-1]).tolist():
        logp = _log_softmax_row([float(v) for v in row])
        out.append(-sum(math.exp(lp) * lp for lp in logp if lp != -math.inf))
    return torch.tensor(out, dtype=_dtype(logits)).reshape(logits.shape[:-1])


def reinforce_loss(logprobs, returns, baseline=None, mask=None):
    lp, g = _floats(logprobs), _floats(returns)
    b = [0.0] * len(lp) if baseline is None else _floats(baseline)
    terms = [l * (gi - bi) for l, gi, bi in zip(lp, g, b)]
    optional = () if baseline is None else (baseline,)
    return _scalar(-_mean(terms, _kept(mask, len(lp))), _dtype(logprobs, returns, *optional))


# --- importance sampling and KL (importance.py, kl.py) ------------------------------------------


def _approx_kl(log_ratios: list[float], keep: list[bool]) -> float:
    return _mean([math.exp(lr) - 1 - lr for lr in log_ratios], keep)


def cpi_surrogate_loss(logprobs, old_logprobs, advantages, mask=None):
    lr = [a - b for a, b in zip(_floats(logprobs), _floats(old_logprobs))]
    keep = _kept(mask, len(lr))
    terms = [math.exp(l) * a for l, a in zip(lr, _floats(advantages))]
    loss = _scalar(-_mean(terms, keep), _dtype(logprobs, old_logprobs, advantages))
    return loss, {"approx_kl": _approx_kl(lr, keep)}


def trajectory_ratio(logprobs, old_logprobs, mask=None):
    ones = torch.ones(logprobs.shape, dtype=torch.bool)
    out = []
    for lp, olp, keep in zip(_columns(logprobs), _columns(old_logprobs), _columns(ones if mask is None else mask)):
        product = 1.0
        for a, b, k in zip(lp, olp, keep):
            if k:
                product *= math.exp(a - b)
        out.append(product)
    return torch.tensor(out, dtype=_dtype(logprobs, old_logprobs)).reshape(logprobs.shape[1:])


def kl_estimate(logprobs, ref_logprobs, kind="k1"):
    formulas = {"k1": lambda d: d, "k2": lambda d: 0.5 * d * d, "k3": lambda d: math.exp(-d) - 1 + d}
    d = [a - b for a, b in zip(_floats(logprobs), _floats(ref_logprobs))]
    out = [formulas[kind](di) for di in d]
    return torch.tensor(out, dtype=_dtype(logprobs, ref_logprobs)).reshape(logprobs.shape)


# --- clipping and the full loss (clipping.py, losses.py) ----------------------------------------


def clipped_surrogate_loss(logprobs, old_logprobs, advantages, clip_eps, mask=None):
    lr = [a - b for a, b in zip(_floats(logprobs), _floats(old_logprobs))]
    keep = _kept(mask, len(lr))
    terms, clipped = [], []
    for l, a in zip(lr, _floats(advantages)):
        ratio = math.exp(l)
        bounded = min(max(ratio, 1 - clip_eps), 1 + clip_eps)
        terms.append(min(ratio * a, bounded * a))
        clipped.append(1.0 if abs(ratio - 1) > clip_eps else 0.0)
    loss = _scalar(-_mean(terms, keep), _dtype(logprobs, old_logprobs, advantages))
    return loss, {"clip_fraction": _mean(clipped, keep), "approx_kl": _approx_kl(lr, keep)}


def clipped_value_loss(values, old_values, returns, clip_eps, mask=None):
    v, v_old, r = _floats(values), _floats(old_values), _floats(returns)
    keep = _kept(mask, len(v))
    terms, clipped = [], []
    for vi, oi, ri in zip(v, v_old, r):
        if clip_eps is None:
            terms.append((vi - ri) ** 2)
            clipped.append(0.0)
        else:
            vc = oi + min(max(vi - oi, -clip_eps), clip_eps)
            terms.append(max((vi - ri) ** 2, (vc - ri) ** 2))
            clipped.append(1.0 if abs(vi - oi) > clip_eps else 0.0)
    loss = _scalar(0.5 * _mean(terms, keep), _dtype(values, old_values, returns))
    return loss, {"clip_fraction": _mean(clipped, keep)}


def ppo_loss(
    *, logprobs, old_logprobs, advantages, values, old_values, returns,
    clip_eps, vf_clip_eps, vf_coef, entropy=None, ent_coef=0.0, kl=None, kl_coef=0.0, mask=None,
):
    policy_loss, ps = clipped_surrogate_loss(logprobs, old_logprobs, advantages, clip_eps, mask)
    value_loss, vs = clipped_value_loss(values, old_values, returns, vf_clip_eps, mask)
    loss = float(policy_loss) + vf_coef * float(value_loss)
    stats = {
        "policy_loss": float(policy_loss),
        "value_loss": float(value_loss),
        "clip_fraction": ps["clip_fraction"],
        "approx_kl": ps["approx_kl"],
        "value_clip_fraction": vs["clip_fraction"],
    }
    if entropy is not None:
        stats["entropy"] = _mean(_floats(entropy), _kept(mask, entropy.numel()))
        loss -= ent_coef * stats["entropy"]
    if kl is not None:
        stats["kl"] = _mean(_floats(kl), _kept(mask, kl.numel()))
        loss += kl_coef * stats["kl"]
    stats["loss"] = loss
    optional = tuple(t for t in (entropy, kl) if t is not None)
    dtype = _dtype(logprobs, old_logprobs, advantages, values, old_values, returns, *optional)
    return _scalar(loss, dtype), stats
