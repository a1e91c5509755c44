"""Shared pieces of the ``ppo_lab.scale`` tests: a tiny policy with a value head, a PPO minibatch
with uneven response lengths, and the trainer's minibatch loss (response log-probs + core
``ppo_loss`` with ``mask=response_mask``).

(A plain module: the distributed workers and the single-process tests import it.)
"""

from __future__ import annotations

import torch
from torch import nn

from ppo_lab.core import ppo_loss
from ppo_lab.llm.logprobs import response_logprobs
from ppo_lab.llm.models import SamplingSpec, ValueHead, build_model, quiet_transformers, tiny_config
from ppo_lab.llm.sequences import SequenceBatch

VOCAB = 64
SPEC = SamplingSpec(temperature=0.9, excluded_token_ids=(0,))


def tiny_policy(arch: str = "gpt2", seed: int = 0, dtype=torch.float32, d_model: int = 64):
    """A seeded 2-layer causal LM (d 64, 4 heads) built from a config, eval mode."""
    config = tiny_config(arch, VOCAB, n_layer=2, d_model=d_model, n_head=4, max_positions=64)
    config.initializer_range = 0.2
    torch.manual_seed(seed)
    with quiet_transformers():
        return build_model(config).to(dtype)


class PolicyValue(nn.Module):
    """A causal LM and a value head on its trunk (``value_design="head"``); ``forward(batch)`` →
    ``(logprobs, entropy, values)``, each float32 ``[B, T]``, from one trunk pass."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = ValueHead(policy.config.get_text_config().hidden_size)
        with torch.no_grad():  # not zero, so the value loss sends gradients into the trunk
            self.value_head.linear.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(5))

    def forward(self, batch: SequenceBatch):
        out = response_logprobs(self.policy, batch, SPEC, with_entropy=True, with_hidden=True)
        return out.logprobs, out.entropy, self.value_head(out.hidden)


def ppo_minibatch(size: int = 8, seed: int = 1, max_prompt: int = 5, max_response: int = 9) -> dict:
    """A seeded PPO minibatch: a ``SequenceBatch`` with uneven prompt and response lengths (1 …
    ``max_response`` tokens) and old log-probs, advantages, returns and old values, ``[B, T]``."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, VOCAB, (int(torch.randint(1, max_prompt + 1, (1,), generator=g)),), generator=g).tolist()
               for _ in range(size)]
    lengths = torch.randint(1, max_response + 1, (size,), generator=g)
    lengths[0] = max_response  # the widest response sets T
    responses = [torch.randint(1, VOCAB, (int(n),), generator=g).tolist() for n in lengths]
    batch = SequenceBatch.from_token_lists(prompts, responses, pad_token_id=0)
    B, T = batch.response_mask.shape
    keep = batch.response_mask
    noise = lambda scale=1.0: torch.where(keep, scale * torch.randn(B, T, generator=g), 0.0)  # noqa: E731
    return {"batch": batch, "response_mask": keep, "old_logprobs": torch.where(keep, -3.5 + noise(0.3), 0.0),
            "advantages": noise(), "returns": noise(), "old_values": noise(0.5)}


def select(mb: dict, idx) -> dict:
    """Rows ``idx`` of a minibatch dict."""
    return {k: v.select(idx) if isinstance(v, SequenceBatch) else v[idx] for k, v in mb.items()}


def minibatch_loss(model: nn.Module, mb: dict):
    """The trainer's loss on one (micro-)batch: a token mean over its own response tokens."""
    logprobs, entropy, values = model(mb["batch"])
    return ppo_loss(logprobs=logprobs, old_logprobs=mb["old_logprobs"], advantages=mb["advantages"],
                    values=values, old_values=mb["old_values"], returns=mb["returns"], entropy=entropy,
                    clip_eps=0.2, vf_clip_eps=0.2, vf_coef=0.5, ent_coef=0.01, mask=mb["response_mask"])


def weights(model: nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Parameters by name as whole tensors: FSDP2's ``DTensor`` shards are gathered (a
    collective, so every rank calls it)."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters() if p.requires_grad or not trainable_only}


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter gradients by name (full tensors for FSDP2's ``DTensor`` shards)."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name.replace("module.", "")] = g.detach().clone()
    return out
