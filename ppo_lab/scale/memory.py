"""Memory switches (§8) and the arithmetic of where PPO-RLHF's memory goes.

Switches:

- :func:`enable_activation_checkpointing`: keep only each transformer block's input during the
  forward and recompute the block in the backward (Chen et al. 2016, "Training Deep Nets with
  Sublinear Memory Cost"): activations shrink from L·(per-block tensors) to L·(block input) +
  one block, for about one extra forward of compute.
- :func:`add_lora`: LoRA adapters (Hu et al. 2021) via ``peft``: W x + (α/r)·B A x with A, B of
  rank r trained and W frozen. The reference model is then *the same weights with the adapters
  switched off* (:func:`reference_model`) — no second copy of the model.
- :func:`on_device`: keep the frozen reference and reward models in host memory and move each
  to the accelerator only for its scoring pass (``--offload-frozen``).

Arithmetic: :func:`estimate_memory` counts the bytes of the four models of PPO-RLHF (policy,
value, reference, reward) — weights, gradients, Adam's two moments, saved activations, KV cache
— for a Hugging Face config, a dtype and these switches. :func:`peak_rss_bytes` and
:func:`saved_activation_bytes` measure the same quantities on a CPU, so a test can hold the
calculator to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from .distributed import is_fsdp, unwrap

__all__ = [
    "MemoryEstimate", "ModelMemory", "add_lora", "count_parameters", "enable_activation_checkpointing",
    "estimate_memory", "on_device", "peak_rss_bytes", "reference_model", "saved_activation_bytes",
]


# --- switches -----------------------------------------------------------------------------------


def _hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model a switch applies to: the model itself, or ``.policy`` of a
    ``PolicyWithValueHead``."""
    model = unwrap(model)
    return model.policy if hasattr(model, "policy") and isinstance(model.policy, nn.Module) else model


def enable_activation_checkpointing(model: nn.Module) -> nn.Module:
    """§8: recompute each transformer block in the backward instead of keeping its activations.

    Calls the model's own ``activation_checkpointing_enable`` (``gradient_checkpointing_enable``
    before transformers 5) with non-reentrant ``torch.utils.checkpoint``. Hugging Face checkpoints
    a block only while the block is in training mode, but PPO runs the policy in eval mode
    (dropout off, so the ratio is exactly 1 on its own rollout). So each block — and only the
    block object, not its submodules, whose dropout stays off — is marked as training right
    before every call; without gradients (generation, scoring) Hugging Face skips the
    checkpointing anyway. ``config.use_cache`` is switched off (generation asks for the cache
    explicitly). Returns ``model``.
    """
    hf = _hf_model(model)
    enable = getattr(hf, "activation_checkpointing_enable", None) or getattr(hf, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(hf, "supports_gradient_checkpointing", False):
        raise ValueError(f"model: {type(hf).__name__} does not support activation checkpointing")
    from transformers.modeling_layers import GradientCheckpointingLayer

    enable({"use_reentrant": False})
    # The blocks only: the trunk (GPT2Model, LlamaModel) has the flag too, and in training mode
    # it would switch the KV cache off during generation.
    blocks = [m for m in hf.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if not blocks:
        raise ValueError(f"model: {type(hf).__name__} has no checkpointable blocks")
    for block in blocks:
        block.register_forward_pre_hook(_mark_training)
    # A forward without use_cache would build a KV cache, and the recompute in the backward
    # would append to it a second time; samplers pass use_cache=True explicitly.
    hf.config.use_cache = False
    return model


def _mark_training(module: nn.Module, args) -> None:
    module.training = True  # this object only: its dropout submodules keep their eval mode


def add_lora(model: nn.Module, r: int, alpha: float | None = None, target_modules=None) -> nn.Module:
    """§8: LoRA adapters of rank ``r`` (config ``--lora-r``) on the Hugging Face model; all other
    weights frozen. Returns the ``peft`` model (or, for a ``PolicyWithValueHead``, the wrapper
    with its ``.policy`` replaced by the peft model and the value head still trained).

    W x + (α/r)·B A x, A ∈ R^{r×d_in} random, B ∈ R^{d_out×r} zero (so training starts at the
    base model), α ↔ ``alpha`` (default 2r). ``target_modules``: peft's per-architecture default
    (GPT-2 ``c_attn``; Llama ``q_proj``, ``v_proj``) unless given. Dropout 0, as the policy.
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"lora_r: expected a positive integer, got {r!r}")
    alpha = 2 * r if alpha is None else alpha
    holder = unwrap(model)
    hf = _hf_model(holder)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules,
                        fan_in_fan_out=getattr(hf.config, "model_type", "") == "gpt2")
    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 a deprecated question (`is_gradient_checkpointing`).
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(hf, config)
    if hf is holder:
        return peft_model
    holder.policy = peft_model
    return holder


def _peft_model(model: nn.Module):
    hf = _hf_model(model)
    return hf if hasattr(hf, "disable_adapter") and hasattr(hf, "peft_config") else None


@contextlib.contextmanager
def reference_model(policy: nn.Module, ref_model: nn.Module | None = None,
                    device: torch.device | str | None = None) -> Iterator[nn.Module]:
    """``with reference_model(policy, ref_model) as ref: ref_logprobs = response_logprobs(ref, …)``.

    With LoRA and no ``ref_model``: the policy's own base model with the adapters switched off
    (``peft``'s ``disable_adapter()``) — exactly the weights the adapters were added to, and no
    second copy of them. Otherwise ``ref_model`` itself, moved to ``device`` for the pass when it
    is kept in host memory (:func:`on_device`). Call it under ``torch.no_grad()``.
    """
    peft_model = _peft_model(policy)
    if ref_model is None:
        if peft_model is None:
            raise ValueError("ref_model: needed unless the policy has LoRA adapters (lora_r > 0)")
        with peft_model.disable_adapter():
            # Under FSDP2 the peft model is the sharded root: its own forward must run (its hooks
            # gather the root's shards); otherwise the base model (it takes logits_to_keep).
            yield peft_model if is_fsdp(peft_model) else peft_model.get_base_model()
        return
    with on_device(ref_model, device) as ref:
        yield ref


@contextlib.contextmanager
def on_device(model: nn.Module | None, device: torch.device | str | None) -> Iterator[nn.Module | None]:
    """Move a frozen ``model`` to ``device`` for the block and back to where it was afterwards.

    The frozen reference and reward models are needed once per rollout, for one scoring pass
    each; kept in host memory between passes (``--offload-frozen``), they cost the accelerator
    only one model's weights at a time, for a host-to-device copy per pass. ``device=None`` or
    the device the model is already on: nothing moves.
    """
    if model is None:  # e.g. no reward model when a reward function scores
        yield None
        return
    home = next(model.parameters()).device
    target = home if device is None else torch.device(device)
    if target == home:
        yield model
        return
    model.to(target)
    try:
        yield model
    finally:
        model.to(home)


# --- measuring on a CPU ---------------------------------------------------------------------------


def saved_activation_bytes(fn: Callable[[], object], exclude: nn.Module | None = None) -> tuple[object, int]:
    """Run ``fn()`` and count the bytes autograd saves for the backward (``saved_tensors_hooks``).

    Each storage is counted once (views of one tensor share it); the parameters of ``exclude``
    (the model, whose weights are saved by every matmul but are not activations) are skipped.
    Returns ``(fn's result, bytes)``.
    """
    skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def _status_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def peak_rss_bytes(fn: Callable[[], object]) -> tuple[object, int, int]:
    """Run ``fn()`` and return ``(result, peak resident bytes during it, resident bytes before)``.

    Linux only: the kernel's high-water mark of resident memory (``VmHWM``) is reset
    (``/proc/self/clear_refs``) just before the call and read after it, so the peak is exact —
    nothing is sampled. Why resident memory and not ``tracemalloc``: tensor storage is allocated
    by PyTorch's C++ allocator, which ``tracemalloc`` (Python's allocator only) never sees; the
    resident set is what the machine actually runs out of. Run the process with
    ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc returns freed tensors to the system at once, as
    PyTorch's CUDA allocator statistics would count them.
    """
    status = Path("/proc/self/status")
    if not status.is_file():
        raise ValueError("fn: peak_rss_bytes needs Linux's /proc/self/status")
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    out = fn()
    return out, _status_bytes("VmHWM"), before


# --- the calculator -------------------------------------------------------------------------------

# Bytes autograd saves per token per transformer block, measured with ``saved_activation_bytes``
# on transformers 5.24's GPT-2 and Llama blocks (SDPA attention): a·d + b·ffn + 4·S + c·heads,
# where d is the hidden size, ffn the MLP width and S the sequence length (the expanded
# attention mask, [B, 1, S, S] float, is kept by every block). Under autocast the matmul inputs
# are saved as 16-bit copies, the norms' inputs stay float32. tests/unit/test_scale_memory.py
# re-measures them on tiny models. CUDA's autocast runs ``pow`` in float32 (CPU's keeps it in
# 16 bits), so GPT-2's GELU(tanh) — 0.5·x·(1 + tanh(√(2/π)(x + 0.044715·x³))) — is float32 from
# x³ on: x³'s float32 input, the tanh output and 1 + tanh are saved at 4 bytes instead of 2, and
# the product is cast back to 16 bits for the next matmul, 2 more: b grows from 10 to 16.
# (Llama's RMSNorm casts to float32 itself and SiLU is not on either list: no difference.)
_ACTIVATION_COEFFS = {
    # family: {dtype: (a, b, c)}
    "gpt2": {"fp32": (40, 20, 8), "16": (24, 10, 0), "16-cuda": (24, 16, 0)},  # LayerNorm, GELU(tanh) in 5 ops
    "llama": {"fp32": (40, 16, 6), "16": (34, 8, 0)},    # RMSNorm, SwiGLU
}


def _family(config) -> str:
    return "gpt2" if getattr(config, "model_type", "") in ("gpt2", "gpt_neox", "opt", "gptj") else "llama"


def _dims(config) -> dict[str, int]:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    d = getattr(c, "hidden_size", None) or c.n_embd
    layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    kv = getattr(c, "num_key_value_heads", None) or heads
    ffn = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d
    head_dim = getattr(c, "head_dim", None) or d // heads
    return dict(d=d, layers=layers, heads=heads, kv_heads=kv, ffn=ffn, head_dim=head_dim, vocab=c.vocab_size)


def count_parameters(config, *, lora_r: int = 0, scalar_head: bool = False) -> tuple[int, int, int]:
    """``(all, trainable, largest block)`` parameter counts of ``AutoModelForCausalLM.from_config
    (config)`` (with ``scalar_head``: the trunk + a ``score`` head H → 1, a reward/value model),
    built on the ``meta`` device — no memory, exact counts, tied weights counted once.

    With ``lora_r`` the trainable count is the LoRA adapters' (peft's default targets).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config)
        if lora_r:
            model = add_lora(model, lora_r)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = [m for m in model.modules() if type(m).__name__ in set(getattr(_hf_model(model), "_no_split_modules", None) or ())]
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    if scalar_head:
        d = _dims(config)["d"]
        lm_head = model.get_output_embeddings()
        untied = lm_head is not None and lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        total += d - (lm_head.weight.numel() if untied else 0)
        trainable = total
    return total, trainable, largest


@dataclasses.dataclass
class ModelMemory:
    """Bytes one model holds on one device (§8)."""

    weights: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0

    @property
    def static(self) -> int:
        """What the model holds for the whole run: weights, gradients, optimiser state."""
        return self.weights + self.grads + self.optimizer


@dataclasses.dataclass
class MemoryEstimate:
    """The calculator's answer: per model, plus the generation-time KV cache (bytes per rank)."""

    policy: ModelMemory
    value: ModelMemory
    reference: ModelMemory
    reward: ModelMemory
    kv_cache: int
    host: int
    """Bytes kept in host memory instead (offloaded frozen models)."""

    @property
    def models(self) -> dict[str, ModelMemory]:
        return {"policy": self.policy, "value": self.value, "reference": self.reference, "reward": self.reward}

    @property
    def static(self) -> int:
        return sum(m.static for m in self.models.values())

    @property
    def training_peak(self) -> int:
        """Static bytes + the activations of the policy and value micro-batch forwards."""
        return self.static + self.policy.activations + self.value.activations

    @property
    def generation_peak(self) -> int:
        return self.static + self.kv_cache

    @property
    def peak(self) -> int:
        return max(self.training_peak, self.generation_peak)

    def rows(self) -> list[dict[str, float]]:
        """A table: one row per model, GiB per column."""
        gib = 2.0 ** 30
        rows = [{"model": name, **{k: getattr(m, k) / gib for k in ("weights", "grads", "optimizer", "activations")}}
                for name, m in self.models.items()]
        rows.append({"model": "kv cache", "weights": 0.0, "grads": 0.0, "optimizer": 0.0, "activations": self.kv_cache / gib})
        return rows


def _block_activation_bytes(dims: dict[str, int], family: str, dtype: str, seq_len: int, device: str = "cpu") -> int:
    """Per-token bytes one transformer block saves for the backward (``_ACTIVATION_COEFFS``)."""
    coeffs = _ACTIVATION_COEFFS[family]
    key = "fp32" if dtype == "fp32" else "16-cuda" if device == "cuda" and "16-cuda" in coeffs else "16"
    a, b, c = coeffs[key]
    return a * dims["d"] + b * dims["ffn"] + 4 * seq_len + c * dims["heads"]


def estimate_memory(
    config,
    *,
    micro_batch_size: int,
    prompt_len: int,
    response_len: int,
    generation_batch_size: int | None = None,
    dtype: str = "fp32",
    grad_checkpointing: bool = False,
    lora_r: int = 0,
    value_model: str = "separate",
    offload_frozen: bool = False,
    world_size: int = 1,
    fsdp: bool = False,
    logit_copies: int = 4,
    device: str = "cpu",
) -> MemoryEstimate:
    """§8: bytes per rank of one PPO-RLHF step for a Hugging Face model ``config``.

    Four models: the **policy** (trained: float32 master weights, float32 gradients, Adam's m and
    v — 4 + 4 + 8 bytes per trainable parameter), the **value** model (``"separate"``: a second
    trunk trained the same way; ``"head"``: an H → 1 head on the policy's trunk), the frozen
    **reference** and **reward** models (weights only, stored in the compute dtype; the
    reference costs nothing with LoRA — it is the policy's base weights). ``dtype`` is the
    compute dtype of the forward (autocast keeps float32 master weights and adds a 16-bit copy
    of the matmul weights while they are in use).

    Activations of a training micro-batch (``micro_batch_size`` sequences of
    ``prompt_len + response_len`` tokens): per block ``a·d + b·ffn + 4·S + c·heads`` bytes per
    token (measured coefficients, ``_ACTIVATION_COEFFS``; ``device`` is ``"cpu"`` or
    ``"cuda"``, whose autocast keeps more of GPT-2's MLP in float32), times the number of blocks; with
    activation checkpointing only each block's float32 input (4·d per token) is kept, plus one
    block's activations during its recompute (the logits' tensors are freed before it). The
    response logits add ``logit_copies`` float32 ``[b, T, V]`` tensors (4 for
    ``response_logprobs`` with entropy: the logits, their / temperature copy, the log-softmax and
    the softmax).
    KV cache at generation: 2 (K and V) · layers · batch · (P + T) · kv_heads · head_dim in the
    compute dtype. FSDP divides weights, gradients and Adam state by ``world_size`` and adds one
    gathered block; DDP adds its gradient buckets (one more copy of the gradients).
    """
    dims = _dims(config)
    family = _family(config)
    bytes_16 = 2 if dtype in ("bf16", "fp16") else 4
    if dtype not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"dtype: expected 'fp32', 'bf16' or 'fp16', got {dtype!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if value_model not in ("separate", "head"):
        raise ValueError(f"value_model: expected 'separate' or 'head', got {value_model!r}")
    total, trainable, largest_block = count_parameters(config, lora_r=lora_r)
    seq = prompt_len + response_len
    tokens = micro_batch_size * seq
    shard = world_size if fsdp else 1

    def trained(params: int, trainable_params: int, with_logits: bool) -> ModelMemory:
        grads = trainable_params * 4 // shard
        weights = params * 4 // shard + (largest_block * 4 if fsdp else 0)  # FSDP: one gathered block
        block = _block_activation_bytes(dims, family, dtype, seq, device) * tokens
        logits = logit_copies * 4 * micro_batch_size * response_len * dims["vocab"] if with_logits else 0
        if grad_checkpointing:
            # Block inputs, plus the larger of the logits' tensors (freed first in the backward)
            # and the one block being recomputed.
            acts = dims["layers"] * 4 * dims["d"] * tokens + max(block, logits)
        else:
            acts = dims["layers"] * block + logits
        if dtype != "fp32":
            acts += params * 2  # autocast's 16-bit copies of the weights, saved by the matmuls
        ddp_buckets = grads if world_size > 1 and not fsdp else 0
        return ModelMemory(weights=weights, grads=grads + ddp_buckets, optimizer=2 * grads, activations=acts)

    policy = trained(total, trainable, with_logits=True)
    if value_model == "separate":
        value_params = count_parameters(config, scalar_head=True)[0]
        value = trained(value_params, value_params, with_logits=False)
    else:
        value = ModelMemory(weights=(dims["d"] + 1) * 4, grads=(dims["d"] + 1) * 4, optimizer=(dims["d"] + 1) * 8)
    frozen = total * bytes_16
    reward_weights = count_parameters(config, scalar_head=True)[0] * bytes_16
    reference = ModelMemory(weights=0 if lora_r else frozen)
    reward = ModelMemory(weights=reward_weights)
    host = 0
    if offload_frozen:
        host = reference.weights + reward.weights
        on_device_one = max(reference.weights, reward.weights)  # one frozen model at a time
        reference, reward = ModelMemory(weights=on_device_one), ModelMemory()
    gen_batch = generation_batch_size or micro_batch_size
    kv = 2 * dims["layers"] * gen_batch * seq * dims["kv_heads"] * dims["head_dim"] * bytes_16
    return MemoryEstimate(policy=policy, value=value, reference=reference, reward=reward, kv_cache=kv, host=host)
