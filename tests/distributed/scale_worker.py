"""Run by torchrun (2 gloo CPU ranks) from test_scale_distributed.py; writes results_rank{r}.pt.

    torchrun --nproc-per-node 2 tests/distributed/scale_worker.py OUT_DIR ddp fsdp trainer
    (or two launchers: --nnodes 2 --node-rank i --nproc-per-node 1 --rdzv-endpoint 127.0.0.1:PORT)

``SCALE_DEVICE=cuda`` runs the same scenarios on GPUs (NCCL; tests/gpu/test_scale_gpu.py).

Every rank also computes the single-process answers on the whole global minibatch, with an
unwrapped copy of the model, so the test compares like with like.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_helpers import (PolicyValue, grads, minibatch_loss, ppo_minibatch, select,  # noqa: E402
                           tiny_policy, weights)

from ppo_lab.core import masked_whiten  # noqa: E402
from ppo_lab.scale.accumulation import accumulate_gradients, micro_batches  # noqa: E402
from ppo_lab.scale.distributed import (all_reduce_stats, cleanup, generation_model, global_early_stop,  # noqa: E402
                                       global_masked_whiten, global_mean, init_distributed,
                                       load_distributed_checkpoint, save_distributed_checkpoint, shard,
                                       wrap_model)

GLOBAL = 8  # sequences per global minibatch
TARGET_KL = 0.01  # early-stop threshold: reached after a few steps at lr 3e-4


def on_policy(model, mb: dict) -> dict:
    """``mb`` with old log-probs (and old values) of ``model`` itself: approx KL starts at 0."""
    with torch.no_grad():
        logprobs, _, values = model(mb["batch"])
    return {**mb, "old_logprobs": logprobs, "old_values": values}


def to_device(obj, device):
    """Tensors (and ``SequenceBatch``es) in nested dicts moved to ``device``."""
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj.to(device) if hasattr(obj, "to") else obj


def single_process(model, mb) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    loss, _ = minibatch_loss(model, mb)
    loss.backward()
    return grads(model)


def train_steps(model, data, info, steps, K=1, target_kl=None):
    """``steps`` optimiser steps on rank-sharded minibatches, early stop on the global approx KL."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    stopped_at, approx_kl = None, []
    for step in range(steps):
        local = select(data[step % len(data)], shard(range(GLOBAL), info))
        optimizer.zero_grad()
        stats = accumulate_gradients(model, micro_batches(local, K), lambda b: minibatch_loss(model, b))
        approx_kl.append(stats["approx_kl"])
        if global_early_stop(stats["approx_kl"], target_kl, weight=int(local["response_mask"].sum())):
            stopped_at = step
            break
        optimizer.step()
    return optimizer, stopped_at, approx_kl


def ddp(info, out: dict) -> None:
    base = PolicyValue(tiny_policy()).to(info.device)
    mb = to_device(ppo_minibatch(GLOBAL), info.device)
    local = select(mb, shard(range(GLOBAL), info))
    out["single"] = single_process(base, mb)
    # 1. DDP, one micro-batch per rank, loss scaled by the global token count.
    model = wrap_model(copy.deepcopy(base), info)
    accumulate_gradients(model, [local], lambda b: minibatch_loss(model, b))
    out["ddp"] = grads(model)
    # 2. Two micro-batches per rank under no_sync, then one all-reduce.
    model = wrap_model(copy.deepcopy(base), info)
    out["ddp_accum2_stats"] = accumulate_gradients(model, micro_batches(local, 2),
                                                     lambda b: minibatch_loss(model, b))
    out["ddp_accum2"] = grads(model)
    out["single_stats_loss"] = minibatch_loss(copy.deepcopy(base), mb)[1]["loss"]
    # 3. The training forward through .module: no all-reduce, each rank keeps its own gradient.
    model = wrap_model(copy.deepcopy(base), info)
    minibatch_loss(model.module, local)[0].backward()
    out["module_forward"] = grads(model)
    # 4. Several steps with the KL early stop on: identical weights on every rank.
    data = [on_policy(base, to_device(ppo_minibatch(GLOBAL, seed=s), info.device)) for s in range(1, 4)]
    model = wrap_model(copy.deepcopy(base), info)
    _, out["stopped_at"], out["approx_kl"] = train_steps(model, data, info, steps=8, K=2, target_kl=TARGET_KL)
    out["weights_after_steps"] = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    # 5. Global statistics equal the statistics of the concatenated batch.
    x, keep = mb["advantages"], mb["response_mask"]
    rows = shard(range(GLOBAL), info)
    out["whiten_global"] = global_masked_whiten(x[rows], keep[rows])
    out["whiten_single"] = masked_whiten(x, keep)[rows]
    out["mean_global"] = global_mean(x[rows], keep[rows])
    out["mean_single"] = x[keep.bool()].double().mean()
    out["stats"] = all_reduce_stats({"kl": float(info.rank + 1)}, weight=float(info.rank + 1))
    # 6. Generation on the module behind the wrapper.
    with generation_model(model) as m, torch.no_grad():
        out["generated"] = m.policy.generate(mb["batch"].prompt_ids[:2], attention_mask=mb["batch"].prompt_mask[:2],
                                             max_new_tokens=3, do_sample=False, pad_token_id=0)


def fsdp(info, out: dict, tmp: Path) -> None:
    base = PolicyValue(tiny_policy("llama")).to(info.device)
    mb = to_device(ppo_minibatch(GLOBAL), info.device)
    local = select(mb, shard(range(GLOBAL), info))
    out["fsdp_single"] = single_process(base, mb)
    out["fsdp_single_loss"] = minibatch_loss(copy.deepcopy(base), mb)[1]["loss"]
    model = wrap_model(copy.deepcopy(base), info, fsdp=True)
    out["fsdp_stats"] = accumulate_gradients(model, [local], lambda b: minibatch_loss(model, b))
    out["fsdp"] = grads(model)
    # Checkpoint after 2 steps, 2 more steps; a fresh model resumed from the checkpoint, 2 steps.
    data = [to_device(ppo_minibatch(GLOBAL, seed=s), info.device) for s in range(1, 5)]

    def run(model, optimizer, first, last):
        for step in range(first, last):
            optimizer.zero_grad()
            accumulate_gradients(model, [select(data[step], shard(range(GLOBAL), info))],
                                 lambda b: minibatch_loss(model, b))
            optimizer.step()

    model = wrap_model(copy.deepcopy(base), info, fsdp=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    run(model, optimizer, 0, 2)
    save_distributed_checkpoint(tmp / "ckpt", model, optimizer, info, extra={"step": 2})
    run(model, optimizer, 2, 4)
    out["uninterrupted"] = weights(model)
    resumed = wrap_model(copy.deepcopy(base), info, fsdp=True)
    optimizer = torch.optim.Adam(resumed.parameters(), lr=3e-3)
    extra = load_distributed_checkpoint(tmp / "ckpt", resumed, optimizer, info)
    run(resumed, optimizer, extra["step"], 4)
    out["resumed"] = weights(resumed)
    # Generation: all shards gathered once, same tokens as the unsharded model.
    prompt = mb["batch"].prompt_ids[:2], mb["batch"].prompt_mask[:2]
    with generation_model(model) as m, torch.no_grad():
        out["fsdp_generated"] = m.policy.generate(prompt[0], attention_mask=prompt[1], max_new_tokens=3,
                                                  do_sample=False, pad_token_id=0)
    out["fsdp_sharded_after_generation"] = all(type(p).__name__ == "DTensor" for p in model.parameters())
    reference = {n: p for n, p in out["uninterrupted"].items()}
    plain = copy.deepcopy(base)
    plain.load_state_dict(reference, strict=False)  # lm_head is tied to the embeddings
    with torch.no_grad():
        out["plain_generated"] = plain.policy.generate(prompt[0], attention_mask=prompt[1], max_new_tokens=3,
                                                       do_sample=False, pad_token_id=0)


def to_cpu(obj):
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return obj.cpu() if isinstance(obj, torch.Tensor) else obj


def trainer(info, out: dict) -> None:
    """The RLHF trainer itself on 2 ranks (tiny preset, 2 iterations): DDP with accumulation,
    bf16, activation checkpointing and the KL early stop; then FSDP2 with LoRA."""
    from ppo_lab.llm.ppo import PRESETS, train

    base = PRESETS["tiny"][1].replace(iterations=2, batch_size=8, num_minibatches=2, ppo_epochs=2,
                                      max_new_tokens=8, eval_every=0, target_kl=0.002, warmup_iterations=0)
    for name, changes in (("ddp", dict(grad_accum_steps=2, dtype="bf16", grad_checkpointing=True)),
                          ("fsdp", dict(fsdp=True, lora_r=4, value_design="head"))):
        result = train(base.replace(**changes))
        out[f"trainer_{name}"] = {"weights": weights(result.policy, trainable_only=True),
                                  "history": result.history}


def main() -> None:
    torch.set_num_threads(1)
    tmp, scenarios = Path(sys.argv[1]), sys.argv[2:]
    info = init_distributed(device=os.environ.get("SCALE_DEVICE", "cpu"))
    out = {"rank": info.rank, "world_size": info.world_size}
    try:
        if "ddp" in scenarios:
            ddp(info, out)
        if "fsdp" in scenarios:
            fsdp(info, out, tmp)
        if "trainer" in scenarios:
            trainer(info, out)
        torch.save(to_cpu(out), tmp / f"results_rank{info.rank}.pt")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
