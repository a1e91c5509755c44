"""ppo_lab's PPO-RLHF trainer against TRL 1.12.0's PPO trainer, at equal work, on one CPU thread.

    python benchmarks/llm_vs_trl.py              # writes ppo_lab/results/llm_vs_trl.json
    python benchmarks/llm_vs_trl.py --smoke      # ppo_lab side only, tiny settings (tests)

Both sides train the same tiny GPT-2 (2 layers, d = 128, 4 heads, vocabulary 2048), from the same
initial weights written once by this script: a policy, a reference copy of it, a reward model and
a separate value model initialised from the reward model, as TRL's PPO example sets them up.
Batch 32 prompts of 16 tokens, responses of 32 tokens, temperature 0.7, 4 PPO epochs of one
minibatch, fp32, k1 KL to the reference with a fixed β = 0.05, no sample generations. TRL runs
with no stop token (``stop_token=None``); ppo_lab stops a row at EOS, which the random initial
policy samples with probability about 1/2048 per token: its sampler still runs all 32 steps for
the batch and every later pass has width 32, so the work is the same (the rows' mean response
length is recorded).

TRL is installed by this script into its own virtual environment (``--trl-venv``, default
``~/.cache/ppo-lab-bench/trl-1.12.0``): later TRL releases removed this PPO trainer, and the
package must not enter ppo_lab's own environment. Each side runs in a fresh one-thread
subprocess per round, rounds interleaved (ppo_lab, TRL, ppo_lab, TRL, …) so that other load on
the machine falls on both alike; the first iteration of each round is a warm-up and not timed.

Per iteration each worker reports seconds in generate (batched sampling), score (reference,
value and reward passes, per-token rewards and GAE) and train (the PPO epochs), and the process's
peak RSS. The model FLOPs of one iteration are counted from the shapes (``model_flops``), and
the same matmuls are timed alone at their shapes on one thread (``matmul_floor``): that floor is
the time the arithmetic itself needs, and MFU = floor / measured time. After the timed rounds,
each side runs once more (warm-up + one iteration, not timed) under ``torch.profiler`` with
``profile_memory``: the peak of its CPU tensor allocations is its peak tensor memory
(``peak_tensor_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRL_VERSION = "1.12.0"
# TRL 1.12.0 needs transformers >= 4.56.2; it imports and runs with the book's 5.24.0 and
# torch 2.13.0, so the bench venv pins the same versions: only TRL's own code differs.
TRL_VENV_PINS = [f"trl=={TRL_VERSION}", "transformers==5.24.0", "torch==2.13.0",
                 "accelerate==1.15.0", "psutil"]
DEFAULT_VENV = Path.home() / ".cache" / "ppo-lab-bench" / f"trl-{TRL_VERSION}"
ROOT = Path(__file__).resolve().parent.parent

# The one setting both sides share (TRL's PPOConfig defaults where the issue fixes nothing).
SETTINGS = dict(vocab_size=2048, n_layer=2, d_model=128, n_head=4, batch_size=32, prompt_length=16,
                response_length=32, ppo_epochs=4, num_minibatches=1, temperature=0.7, kl_coef=0.05,
                learning_rate=3e-6, clip_eps=0.2, vf_clip_eps=0.2, vf_coef=0.1, gamma=1.0,
                gae_lambda=0.95)
SMOKE = dict(SETTINGS, batch_size=4, prompt_length=4, response_length=4, ppo_epochs=1)


# --- shared assets --------------------------------------------------------------------------

def make_assets(directory: Path, settings: dict, num_prompts: int, seed: int = 0) -> None:
    """Write the tokenizer, the initial policy / reward / value weights and the prompts.

    Tokens are ``<pad>``, ``<eos>``, ``<unk>`` and the words ``t3 … t{V-1}`` of a word-level
    tokenizer, so a prompt of 16 random words is exactly 16 tokens on both sides.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel,
                              PreTrainedTokenizerFast)

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2,
             **{f"t{i}": i for i in range(3, settings["vocab_size"])}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                        eos_token="<eos>", unk_token="<unk>", padding_side="left")
    tokenizer.save_pretrained(directory / "tokenizer")
    config = GPT2Config(vocab_size=settings["vocab_size"], n_embd=settings["d_model"],
                        n_layer=settings["n_layer"], n_head=settings["n_head"],
                        n_positions=settings["prompt_length"] + settings["response_length"],
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                        bos_token_id=1, eos_token_id=1, pad_token_id=0, num_labels=1)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(directory / "policy")
    torch.manual_seed(seed + 1)
    GPT2ForSequenceClassification(config).save_pretrained(directory / "reward")
    generator = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(3, settings["vocab_size"], (num_prompts, settings["prompt_length"]),
                        generator=generator)
    with open(directory / "prompts.jsonl", "w") as f:
        for row in ids.tolist():
            f.write(json.dumps({"prompt": " ".join(f"t{i}" for i in row)}) + "\n")


# --- model FLOPs and the matmul floor ----------------------------------------------------------

def matmul_shapes(s: dict) -> dict[str, list[tuple[int, int, int, int]]]:
    """The matmuls of one iteration per stage, as (M, K, N, count): FLOPs = 2·M·K·N·count.

    A transformer layer is q/k/v (d → 3d), the attention output (d → d), the MLP (d → 4d → d)
    and the two attention products (scores Q·Kᵀ and the weighted sum of V, per head). Only the
    logits a stage needs are counted: the next token's in generation, the response positions'
    when scoring and training; a scalar head reads one hidden state (value: every response
    position). Backward counts twice the forward (input and weight gradients).
    """
    B, P, T, d, L, V, H = (s["batch_size"], s["prompt_length"], s["response_length"],
                           s["d_model"], s["n_layer"], s["vocab_size"], s["n_head"])
    S, dh = P + T, d // H

    def trunk(rows: int, context: int, per_row_batches: int) -> list:
        """Linear layers over ``rows`` tokens; attention of ``per_row_batches`` · H heads over
        ``rows/per_row_batches`` queries each against ``context`` keys."""
        q = rows // per_row_batches
        return [(rows, d, 3 * d, L), (rows, d, d, L), (rows, d, 4 * d, L), (rows, 4 * d, d, L),
                (q, dh, context, L * H * per_row_batches), (q, context, dh, L * H * per_row_batches)]

    generate = trunk(B * P, P, B) + [(B, d, V, 1)]  # prefill, then the first token's logits
    for t in range(1, T):  # each later token: one position per sequence against P + t keys
        generate += trunk(B, P + t, B) + [(B, d, V, 1)]
    score = (trunk(B * S, S, B) + [(B * T, d, V, 1)]  # reference logprobs
             + trunk(B * S, S, B) + [(B * T, d, 1, 1)]  # values
             + trunk(B * S, S, B) + [(B, d, 1, 1)])  # reward
    one_pass = trunk(B * S, S, B) + [(B * T, d, V, 1)] + trunk(B * S, S, B) + [(B * T, d, 1, 1)]
    train = [(m, k, n, 3 * c * s["ppo_epochs"]) for m, k, n, c in one_pass]
    return {"generate": generate, "score": score, "train": train}


def model_flops(s: dict) -> dict[str, float]:
    """Counted FLOPs of one iteration per stage (see :func:`matmul_shapes`)."""
    return {stage: float(sum(2 * m * k * n * c for m, k, n, c in shapes))
            for stage, shapes in matmul_shapes(s).items()}


def matmul_floor(s: dict) -> dict[str, float]:
    """Seconds the stage's matmuls take alone on one thread, each shape timed by itself
    (fastest of repeated calls): the raw-compute floor of an iteration."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import time_call

    torch.set_num_threads(1)
    cache: dict[tuple[int, int, int], float] = {}
    floor = {}
    for stage, shapes in matmul_shapes(s).items():
        total = 0.0
        for m, k, n, count in shapes:
            if (m, k, n) not in cache:
                a, b = torch.randn(m, k), torch.randn(k, n)
                cache[(m, k, n)] = time_call(lambda: a @ b, min_time_s=0.02)["min_ms"] / 1e3
            total += cache[(m, k, n)] * count
        floor[stage] = total
    return floor


# --- the workers ---------------------------------------------------------------------------

def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_tensor_mb(fn) -> tuple[float, object]:
    """Run ``fn()`` under ``torch.profiler`` with ``profile_memory``; return the peak of the
    running sum of its CPU tensor allocations and frees (MiB) and ``fn``'s result.

    The profiler records every allocation and free of the CPU allocator as a ``[memory]`` event;
    the running sum in time order is the tensor memory held by what ``fn`` allocated, so its
    maximum is ``fn``'s peak tensor memory (model weights it loads included).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak / 2**20, result


def worker_ppo_lab(assets: Path, settings: dict, iterations: int, memory: bool = False) -> dict:
    import torch

    from ppo_lab.llm.ppo import RLHFConfig, train

    torch.set_num_threads(1)
    config = RLHFConfig(
        model=str(assets / "policy"), ref_model=str(assets / "policy"),
        reward_model=str(assets / "reward"), tokenizer=str(assets / "tokenizer"),
        prompts=str(assets / "prompts.jsonl"), value_design="separate", value_init="reward",
        iterations=iterations, batch_size=settings["batch_size"],
        num_minibatches=settings["num_minibatches"], ppo_epochs=settings["ppo_epochs"],
        max_new_tokens=settings["response_length"],
        temperature=settings["temperature"], kl_coef=settings["kl_coef"], adaptive_kl=False,
        learning_rate=settings["learning_rate"], warmup_iterations=0, anneal_lr=True,
        clip_eps=settings["clip_eps"], vf_clip_eps=settings["vf_clip_eps"],
        vf_coef=settings["vf_coef"], gamma=settings["gamma"], gae_lambda=settings["gae_lambda"],
        max_grad_norm=None, eval_every=0, seed=0, torch_threads=1, dtype="fp32")
    if memory:  # a separate, untimed run: the profiler slows every operator
        peak, _ = peak_tensor_mb(lambda: train(config))
        return {"peak_tensor_mb": peak}
    rss_before = _rss_mb()
    result = train(config)
    rows = [{"generate": r["time/generate"], "score": r["time/score"], "train": r["time/train"],
             "total": r["time/iteration"]} for r in result.history]
    return {"iterations": rows, "peak_rss_mb": _rss_mb(), "rss_after_imports_mb": rss_before,
            "response_length": [r["response/length"] for r in result.history]}


def worker_trl(assets: Path, settings: dict, iterations: int, memory: bool = False) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer, TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    torch.set_num_threads(1)
    if memory:  # the same run, models loaded inside the profiled window as on ppo_lab's side
        peak, _ = peak_tensor_mb(lambda: worker_trl(assets, settings, iterations))
        return {"peak_tensor_mb": peak}
    tokenizer = AutoTokenizer.from_pretrained(assets / "tokenizer")
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy")
    ref_policy = AutoModelForCausalLM.from_pretrained(assets / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(assets / "reward", num_labels=1)
    policy.generation_config.min_new_tokens = settings["response_length"]
    prompts = [json.loads(line)["prompt"] for line in open(assets / "prompts.jsonl")]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]})

    # Stage clocks: generation is TRL's module-level batch_generation; training starts with the
    # first forward of the policy-and-value wrapper; the iteration ends at on_step_end.
    marks: dict[str, float] = {}
    rows: list[dict] = []
    inner_generate, inner_forward = module.batch_generation, module.forward

    def batch_generation(*args, **kwargs):
        marks["generate_start"] = time.perf_counter()
        out = inner_generate(*args, **kwargs)
        marks["generate_end"] = time.perf_counter()
        return out

    def forward(model, *args, **kwargs):
        if isinstance(model, module.PolicyAndValueWrapper) and "train_start" not in marks:
            marks["train_start"] = time.perf_counter()
        return inner_forward(model, *args, **kwargs)

    module.batch_generation, module.forward = batch_generation, forward

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            rows.append({"generate": marks["generate_end"] - marks["generate_start"],
                         "score": marks["train_start"] - marks["generate_end"],
                         "train": now - marks["train_start"],
                         "total": now - marks.get("previous_end", marks["generate_start"])})
            marks.clear()
            marks["previous_end"] = now

    args = PPOConfig(
        output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no", seed=0,
        per_device_train_batch_size=settings["batch_size"], gradient_accumulation_steps=1,
        num_mini_batches=settings["num_minibatches"], num_ppo_epochs=settings["ppo_epochs"],
        local_rollout_forward_batch_size=settings["batch_size"],
        total_episodes=settings["batch_size"] * iterations,
        response_length=settings["response_length"], stop_token=None,
        temperature=settings["temperature"], kl_coef=settings["kl_coef"], kl_estimator="k1",
        learning_rate=settings["learning_rate"], cliprange=settings["clip_eps"],
        cliprange_value=settings["vf_clip_eps"], vf_coef=settings["vf_coef"],
        gamma=settings["gamma"], lam=settings["gae_lambda"], num_sample_generations=0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        disable_tqdm=True, logging_steps=10**9, dataloader_num_workers=0)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy,
                         ref_model=ref_policy, reward_model=reward, value_model=value,
                         train_dataset=dataset, eval_dataset=dataset.select(range(2)),
                         callbacks=[Clock()])
    rss_before = _rss_mb()
    trainer.train()
    return {"iterations": rows, "peak_rss_mb": _rss_mb(), "rss_after_imports_mb": rss_before,
            "response_length": [settings["response_length"]] * len(rows)}


# --- orchestration -------------------------------------------------------------------------

def ensure_trl_venv(venv: Path) -> Path:
    """The bench venv's python, creating the venv and installing TRL into it when missing."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", f"import trl; assert trl.__version__ == '{TRL_VERSION}'"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing TRL {TRL_VERSION} into {venv} …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_VENV_PINS], check=True)
    subprocess.run(probe, check=True)
    return python


def run_side(python: Path, side: str, assets: Path, settings: dict, iterations: int,
             memory: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([str(python), __file__, "--worker", side, "--assets", str(assets),
                          "--settings", json.dumps(settings), "--iterations", str(iterations),
                          *(["--memory"] if memory else [])],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], flops: dict, floor: dict, peak_tensor: dict | None = None) -> dict:
    """Medians per side over the timed iterations, ratios and MFU (rounded; the test recomputes);
    ``peak_tensor``: each side's peak tensor memory (MiB) from its profiled run."""
    import statistics

    stages = ("generate", "score", "train", "total")
    floor_total = sum(floor.values())
    summary: dict = {"model_gflops_per_iteration": round(sum(flops.values()) / 1e9, 3),
                     "floor_seconds": {k: round(v, 4) for k, v in floor.items()},
                     "floor_seconds_total": round(floor_total, 4), "per_side": {}}
    for side in ("ppo_lab", "trl"):
        mine = [r for r in rows if r["side"] == side]
        if not mine:
            continue
        med = {k: round(statistics.median(r[k] for r in mine), 4) for k in stages}
        summary["per_side"][side] = {
            "median_seconds": med, "iterations_timed": len(mine),
            "iterations_per_second": round(1 / med["total"], 4),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in mine), 1),
            "mfu": round(floor_total / med["total"], 4),
            "seconds_over_floor": round(med["total"] / floor_total, 3)}
        if peak_tensor and side in peak_tensor:
            summary["per_side"][side]["peak_tensor_mb"] = round(peak_tensor[side], 1)
    if len(summary["per_side"]) == 2:
        ours, trl = summary["per_side"]["ppo_lab"], summary["per_side"]["trl"]
        speedup = round(trl["median_seconds"]["total"] / ours["median_seconds"]["total"], 3)
        summary["speedup ppo_lab/trl"] = speedup
        summary["peak_rss ppo_lab/trl"] = round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 3)
        if "peak_tensor_mb" in ours and "peak_tensor_mb" in trl:
            summary["peak_tensor ppo_lab/trl"] = round(ours["peak_tensor_mb"] / trl["peak_tensor_mb"], 3)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per round")
    parser.add_argument("--trl-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--smoke", action="store_true",
                        help="ppo_lab only, tiny shapes, one round; writes to --out only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=["ppo_lab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--assets", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        work = worker_ppo_lab if args.worker == "ppo_lab" else worker_trl
        print(json.dumps(work(args.assets, args.settings, args.iterations, memory=args.memory)))
        return

    settings = SMOKE if args.smoke else SETTINGS
    rounds = 1 if args.smoke else args.rounds
    sides = {"ppo_lab": Path(sys.executable)}
    if not args.smoke:
        sides["trl"] = ensure_trl_venv(args.trl_venv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        assets = Path(tmp)
        make_assets(assets, settings, num_prompts=settings["batch_size"] * (args.iterations + 1))
        for round_ in range(rounds):
            order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
            for side in order:
                out = run_side(sides[side], side, assets, settings, args.iterations + 1)
                for i, timing in enumerate(out["iterations"][1:], start=1):  # 0 is the warm-up
                    rows.append({"side": side, "round": round_, "iteration": i, **timing,
                                 "response_length": out["response_length"][i],
                                 "peak_rss_mb": round(out["peak_rss_mb"], 1),
                                 "rss_after_imports_mb": round(out["rss_after_imports_mb"], 1)})
                print(f"round {round_} {side}: "
                      f"{sum(r['total'] for r in out['iterations'][1:]) / args.iterations:.3f} s/it",
                      file=sys.stderr)
        # Peak tensor memory: one more, profiled and untimed, run per side (warm-up + 1 iteration).
        peak_tensor = {side: run_side(python, side, assets, settings, 2, memory=True)["peak_tensor_mb"]
                       for side, python in sides.items()}
        print(f"peak tensor memory (MiB): {peak_tensor}", file=sys.stderr)
    flops, floor = model_flops(settings), matmul_floor(settings)
    summary = summarise(rows, flops, floor, peak_tensor)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import write

    config = {**settings, "rounds": rounds, "iterations_per_round": args.iterations,
              "memory_run_iterations": 2,
              "warmup_iterations_per_round": 1, "torch_threads": 1, "trl_version": TRL_VERSION,
              "trl_venv_pins": TRL_VENV_PINS, "model_flops": flops}
    path = write("llm_vs_trl", config, rows, out=args.out, summary=summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
