"""Chapter 8's switches, measured: PPO update tokens per second and peak memory (§8).

    python benchmarks/scaling.py            # CPU: writes ppo_lab/results/scaling.json
    python benchmarks/scaling.py --gpu      # CUDA: writes ppo_lab/results/scaling_gpu.json

What is timed is the PPO update step of the RLHF trainer — one forward of the policy with its
value head over prompt + response (``response_logprobs`` with entropy and hidden states), the
core ``ppo_loss`` on the response tokens, ``backward`` and Adam — through the ``ppo_lab.scale``
switches: ``accumulate_gradients`` (DDP all-reduce across ranks, token-mean scaling),
``Precision`` (autocast, fp16 GradScaler), activation checkpointing and LoRA. Generation is not
in the timed step. Batches are random tokens with every response at full length.

CPU runs: each case is a fresh process (``torchrun --nproc-per-node N`` for N ranks, gloo, one
thread per rank) that builds and steps a throwaway model, then builds the measured one, runs one
warm-up step, then ``--steps`` timed steps; tokens/s counts all
ranks' prompt + response tokens (each rank keeps its own micro-batch, so 2 ranks process twice
the tokens per step: weak scaling). Peak memory is rank 0's resident high-water mark over the
timed steps above its resident size before building the model (``scale.memory.peak_rss_bytes``,
glibc told to return freed blocks at once), next to the calculator's estimate; saved activation
bytes are counted with ``saved_tensors_hooks`` on one forward. The machine is shared with other
jobs, so compare ratios measured side by side, not absolute figures across files.

GPU run: a GPT-2-small-sized policy (12 layers, d 768, V 50257), batch 64, 128 + 128 tokens, fp32
with TF32 off against bf16 autocast; tokens/s, ``torch.cuda.max_memory_allocated`` against the
calculator, and model FLOPs utilisation against the GPU's stated dense peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "distributed"))  # the policy-with-value-head test model and loss

MODELS = {
    "tiny": dict(arch="gpt2", d_model=128, n_layer=2, n_head=4, vocab=512, batch=8, prompt=32, response=32),
    "50m": dict(arch="gpt2", d_model=512, n_layer=12, n_head=8, vocab=16384, batch=4, prompt=64, response=64),
    "gpt2-small": dict(arch="gpt2", d_model=768, n_layer=12, n_head=12, vocab=50257, batch=64, prompt=128,
                       response=128),
}

CPU_CASES = [
    # (model, ranks, dtype, grad_checkpointing, lora_r, overrides)
    ("tiny", 1, "fp32", False, 0, {}),
    ("tiny", 2, "fp32", False, 0, {}),
    ("tiny", 1, "bf16", False, 0, {}),
    ("tiny", 1, "fp16", False, 0, {}),
    ("tiny", 1, "fp32", True, 0, {}),
    ("tiny", 1, "fp32", False, 8, {}),
    ("50m", 1, "fp32", False, 0, {}),
    ("50m", 2, "fp32", False, 0, {}),
    ("50m", 1, "bf16", False, 0, {}),
    ("50m", 1, "fp32", False, 8, {}),
    # Activation checkpointing where activations dominate: 4 sequences of 256 + 256 tokens.
    ("50m", 1, "fp32", False, 0, {"prompt": 256, "response": 256}),
    ("50m", 1, "fp32", True, 0, {"prompt": 256, "response": 256}),
]

# Dense peak FLOP/s from the vendors' data sheets (SXM parts; no sparsity): (bf16 tensor core, fp32).
GPU_PEAKS = {"H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12),
             "L40S": (362e12, 91.6e12), "A10": (125e12, 31.2e12)}


def _case_name(model, ranks, dtype, ckpt, lora_r, overrides) -> str:
    parts = [model, f"{ranks} rank{'s' if ranks > 1 else ''}", dtype]
    if ckpt:
        parts.append("act. ckpt")
    if lora_r:
        parts.append(f"LoRA r={lora_r}")
    if overrides:
        parts.append(f"S={overrides['prompt'] + overrides['response']}")
    return ", ".join(parts)


def model_flops_per_step(spec: dict, n_block_params: int) -> float:
    """Training FLOPs of one step: 3 × forward (backward = 2 × forward), forward = 2·N_blocks per
    token + attention 4·L·d·S per token (no causal discount) + the LM head on the T + 1 scored
    positions, 2·V·d per position (PaLM, appendix B, without recomputation)."""
    tokens = spec["batch"] * (spec["prompt"] + spec["response"])
    seq = spec["prompt"] + spec["response"]
    forward = (2 * n_block_params * tokens + 4 * spec["n_layer"] * spec["d_model"] * seq * tokens
               + 2 * spec["vocab"] * spec["d_model"] * spec["batch"] * (spec["response"] + 1))
    return 3.0 * forward


def worker(args: dict) -> dict:
    """One case: build, warm up, time ``steps`` update steps; rank 0 returns the measurements."""
    import torch

    from ppo_lab.llm.models import build_model, quiet_transformers
    from ppo_lab.llm.sequences import SequenceBatch
    from ppo_lab.scale.accumulation import accumulate_gradients
    from ppo_lab.scale.distributed import cleanup, init_distributed, rank_seed, wrap_model
    from ppo_lab.scale.memory import (add_lora, count_parameters, enable_activation_checkpointing, peak_rss_bytes,
                                      saved_activation_bytes)
    from ppo_lab.scale.precision import Precision
    from scale_helpers import PolicyValue, minibatch_loss

    torch.set_num_threads(1)
    device = args["device"]
    info = init_distributed(device=device)
    spec = {**MODELS[args["model"]], **args["overrides"]}
    config = model_config(spec)
    B, P, T = spec["batch"], spec["prompt"], spec["response"]
    g = torch.Generator().manual_seed(rank_seed(0, info.rank))
    batch = SequenceBatch.from_parts(torch.randint(1, spec["vocab"], (B, P), generator=g),
                                     torch.ones(B, P, dtype=torch.long),
                                     torch.randint(1, spec["vocab"], (B, T), generator=g), torch.full((B,), T))
    mb = {"batch": batch.to(info.device), "response_mask": batch.response_mask.to(info.device),
          "old_logprobs": torch.full((B, T), -8.0, device=info.device),
          "advantages": torch.randn(B, T, generator=g).to(info.device),
          "returns": torch.randn(B, T, generator=g).to(info.device),
          "old_values": torch.zeros(B, T, device=info.device)}
    precision = Precision(args["dtype"], info.device)
    cuda = info.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:  # fp32 means fp32: no TF32 tensor-core matmuls in the baseline
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def build():
        torch.manual_seed(0)
        with quiet_transformers():
            model = PolicyValue(build_model(config))
        if args["lora_r"]:
            model = add_lora(model, args["lora_r"])
        if args["ckpt"]:
            enable_activation_checkpointing(model)
        model = wrap_model(model, info)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        return model, optimizer

    def step(model, optimizer):
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(model, [mb], lambda b: minibatch_loss(model, b), precision=precision)
        precision.step(optimizer)

    times = []

    def run(steps: int):
        model, optimizer = build()
        step(model, optimizer)  # warm-up: Adam state, allocator, oneDNN / cuBLAS plans
        sync()
        for _ in range(steps):
            start = time.perf_counter()
            step(model, optimizer)
            sync()
            times.append(time.perf_counter() - start)
        return model

    run(0)  # a throwaway model first: the libraries' lazily allocated buffers are not the model's
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model = run(args["steps"])
        peak = torch.cuda.max_memory_allocated() - before
    else:
        model, high, before = peak_rss_bytes(lambda: run(args["steps"]))
        peak = high - before
    _, saved = saved_activation_bytes(lambda: _forward(model, mb, precision, minibatch_loss), exclude=model)
    total, trainable, _ = count_parameters(config, lora_r=args["lora_r"])
    step_s = statistics.median(times)
    tokens = info.world_size * B * (P + T)
    result = {
        "params": total, "trainable_params": trainable, "ranks": info.world_size,
        "tokens_per_step": tokens, "step_s_median": step_s, "step_s_min": min(times),
        "tokens_per_s": tokens / step_s, "response_tokens_per_s": info.world_size * B * T / step_s,
        "peak_bytes": peak, "saved_activation_bytes": saved,
        **estimate(spec, args["dtype"], args["ckpt"], args["lora_r"], info.world_size, info.device.type),
    }
    if cuda:
        n_blocks = total - spec["vocab"] * spec["d_model"] - (spec["prompt"] + spec["response"]) * spec["d_model"]
        flops = model_flops_per_step(spec, n_blocks)
        name = torch.cuda.get_device_name()
        peaks = next((v for k, v in GPU_PEAKS.items() if k in name), None)
        result.update(device_name=name, model_tflops_per_s=flops / step_s / 1e12,
                      mfu=None if peaks is None else flops / step_s / peaks[0 if args["dtype"] != "fp32" else 1],
                      mfu_against="bf16 dense peak" if args["dtype"] != "fp32" else "fp32 (non-tensor-core) peak")
    cleanup()
    return result if info.is_main else {}


def model_config(spec: dict):
    """The Hugging Face config of a ``MODELS`` entry (with a case's overrides)."""
    from ppo_lab.llm.models import tiny_config

    return tiny_config(spec["arch"], spec["vocab"], n_layer=spec["n_layer"], d_model=spec["d_model"],
                       n_head=spec["n_head"], max_positions=spec["prompt"] + spec["response"])


def estimate(spec: dict, dtype: str, ckpt: bool, lora_r: int, world_size: int, device: str) -> dict:
    """The calculator's figures for one case: what the step holds (policy with its value head,
    Adam) and the policy's activations."""
    from ppo_lab.scale.memory import estimate_memory

    est = estimate_memory(model_config(spec), micro_batch_size=spec["batch"], prompt_len=spec["prompt"],
                          response_len=spec["response"], dtype=dtype, grad_checkpointing=ckpt, lora_r=lora_r,
                          value_model="head", world_size=world_size, device=device)
    return {"estimated_bytes": est.policy.static + est.value.static + est.policy.activations,
            "estimated_activation_bytes": est.policy.activations}


def reestimate(path: Path) -> dict:
    """Recompute the calculator's columns of a results file with the current calculator; the
    measured columns stay as they were measured. The file records when and by what command."""
    from common import command

    data = json.loads(path.read_text())
    device = data["config"]["device"]
    for row in data["results"]:
        spec = {k: row[k] for k in ("arch", "d_model", "n_layer", "n_head", "vocab", "batch", "prompt", "response")}
        row.update(estimate(spec, row["dtype"], row["grad_checkpointing"], row["lora_r"], row["ranks"], device))
    data["summary"] = _summary(data["results"])
    now = datetime.datetime.now(datetime.timezone.utc)
    data["estimates_recomputed"] = {"command": command(), "created": now.isoformat(timespec="seconds")}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data["summary"]


def _forward(model, mb, precision, loss_fn):
    with precision.autocast():
        return loss_fn(model, mb)


def run_case(model: str, ranks: int, dtype: str, ckpt: bool, lora_r: int, overrides: dict, *,
             steps: int, device: str = "cpu") -> dict:
    """Run one case in a fresh process (torchrun for several ranks); return rank 0's JSON."""
    args = json.dumps(dict(model=model, dtype=dtype, ckpt=ckpt, lora_r=lora_r, overrides=overrides,
                           steps=steps, device=device))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                "--master-addr", "127.0.0.1", "--master-port", str(29600 + ranks)] if ranks > 1 else [sys.executable]
    out = subprocess.run([*launcher, str(Path(__file__).resolve()), "--worker", args], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"case {args} failed:\n{out.stderr[-3000:]}")
    lines = [line for line in out.stdout.strip().splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the CUDA benchmark instead of the CPU one")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (CPU 3, GPU 10)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    parser.add_argument("--out", type=Path, default=None, help="result file (default ppo_lab/results/)")
    parser.add_argument("--reestimate", type=Path, default=None, metavar="RESULTS_JSON",
                        help="recompute the calculator's estimates in a results file (measurements untouched)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reestimate:
        print(json.dumps(reestimate(args.reestimate), indent=1))
        return
    if args.worker:
        result = worker(json.loads(args.worker))
        if result:  # rank 0 only: two ranks writing to one pipe could interleave their lines
            print(json.dumps(result), flush=True)
        return
    from common import write

    if args.gpu:
        cases = [("gpt2-small", 1, dtype, False, 0, {}) for dtype in ("fp32", "bf16")]
        device, steps, name = "cuda", args.steps or 10, "scaling_gpu"
    else:
        cases, device, steps, name = CPU_CASES, "cpu", args.steps or 3, "scaling"
    rows = []
    for case in cases:
        label = _case_name(*case)
        if args.only and args.only not in label:
            continue
        row = {"case": label, "model": case[0], "ranks": case[1], "dtype": case[2], "grad_checkpointing": case[3],
               "lora_r": case[4], **{**MODELS[case[0]], **case[5]},
               **run_case(*case, steps=steps, device=device)}
        rows.append(row)
        print(f"{label:40s} {row['tokens_per_s']:10.0f} tok/s  peak {row['peak_bytes'] / 2**20:8.1f} MiB"
              f"  (est. {row['estimated_bytes'] / 2**20:8.1f})", flush=True)
    summary = _summary(rows)
    write(name, {"models": MODELS, "steps": steps, "device": device, "threads_per_rank": 1,
                 "tf32": False if args.gpu else None}, rows, out=args.out, summary=summary)
    print(json.dumps(summary, indent=1))


def _summary(rows: list[dict]) -> dict:
    """Ratios between cases measured side by side."""
    by = {r["case"]: r for r in rows}
    out = {}
    for model in ("tiny", "50m"):
        one, two = by.get(f"{model}, 1 rank, fp32"), by.get(f"{model}, 2 ranks, fp32")
        if one and two:
            out[f"{model}: 2-rank / 1-rank tokens/s"] = two["tokens_per_s"] / one["tokens_per_s"]
        bf16 = by.get(f"{model}, 1 rank, bf16")
        if one and bf16:
            out[f"{model}: bf16 / fp32 tokens/s"] = bf16["tokens_per_s"] / one["tokens_per_s"]
    plain, ckpt = by.get("50m, 1 rank, fp32, S=512"), by.get("50m, 1 rank, fp32, act. ckpt, S=512")
    if plain and ckpt:
        out["50m S=512: checkpointing peak / plain peak"] = ckpt["peak_bytes"] / plain["peak_bytes"]
        out["50m S=512: checkpointing saved activations / plain"] = \
            ckpt["saved_activation_bytes"] / plain["saved_activation_bytes"]
        out["50m S=512: checkpointing step time / plain"] = ckpt["step_s_median"] / plain["step_s_median"]
    gpu = {r["dtype"]: r for r in rows if r["model"] == "gpt2-small"}
    if "fp32" in gpu and "bf16" in gpu:
        out["gpt2-small: bf16 / fp32 tokens/s"] = gpu["bf16"]["tokens_per_s"] / gpu["fp32"]["tokens_per_s"]
    out["estimate / measured peak (each case)"] = {r["case"]: r["estimated_bytes"] / r["peak_bytes"] for r in rows}
    return out


if __name__ == "__main__":
    main()
