"""Response log-probabilities (§6): the per-token loop against one batched forward pass, and the
two samplers. Writes ``ppo_lab/results/llm_logprobs.json`` and prints the tables the book shows.

Part 1, scoring a batch of B responses of T tokens after P prompt tokens, three implementations,
checked against each other (max |Δ| ≤ 1e-5) before they are timed:

- ``loop``: errata 1's per-token loop with its off-by-one corrected —
  ``ppo_lab.llm.reference_loop_logprobs``: for each sequence and each t, a forward pass over the
  prompt and ``y_<t``, last position's logits. B·T forward passes, O(T²) work.
- ``batched``: ``ppo_lab.llm.response_logprobs`` — one forward pass over ``[B, P + T]``, the LM
  head on the response positions only, the core ``logprobs_from_logits``.
- ``naive_full``: one forward pass, then ``log_softmax`` of the whole ``[B, P + T, V]`` logits in
  float32 and a gather — what a first version usually writes.

Time (median of interleaved rounds, one thread) and peak extra memory of one call (the rise of
the process's peak resident set during the call: ``/proc/self/clear_refs`` resets the peak, then
VmHWM − VmRSS), for T = 32 and 128, GPT-2 and Llama.

Part 2, sampling B = 32 responses of 32 tokens after 16-token prompts with a KV cache:
``ppo_lab.llm.generate`` (a short loop of our own) against ``hf_generate`` (``model.generate``
with an explicit ``GenerationConfig``). Both draw the same tokens from the same seed (checked).

Timings on a shared machine are noisy: compare the ratios within one file, not across files.

    python benchmarks/llm_logprobs.py            # the committed tables (a few minutes on one core)
    python benchmarks/llm_logprobs.py --quick    # a smoke run: tiny shapes, 2 rounds
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import statistics
from pathlib import Path

import torch
import tyro

from ppo_lab.llm import (
    SamplingSpec,
    SequenceBatch,
    build_model,
    generate,
    hf_generate,
    reference_loop_logprobs,
    response_logprobs,
    tiny_config,
)

from common import write  # benchmarks/common.py (the script's own folder is on sys.path)
from gae import time_interleaved  # noqa: E402  (one timing loop for all benchmarks)

IMPLS = ("loop", "batched", "naive_full")
SAMPLERS = ("own_loop", "model_generate")
MAX_ABS_DIFF = 1e-5
EOS, PAD = 0, 1  # token ids of the synthetic vocabulary; the spec excludes PAD


@dataclasses.dataclass
class Config:
    """Time the per-token loop, one batched pass and a naive full log-softmax; and two samplers."""

    archs: tuple[str, ...] = ("gpt2", "llama")
    """Architectures (learned positions, rotary positions), built with ``tiny_config``."""
    response_lengths: tuple[int, ...] = (32, 128)
    """T, the response width scored."""
    batch_size: int = 8
    """B, sequences scored per call."""
    prompt_length: int = 16
    """P, prompt tokens before each response."""
    vocab_size: int = 4096
    """V (the memory of a full ``[B, P + T, V]`` log-softmax grows with it)."""
    d_model: int = 128
    n_layer: int = 2
    n_head: int = 4
    rounds: int = 5
    """Timed calls per implementation (one per round, after one warm-up call)."""
    generation_batch: int = 32
    generation_prompt: int = 16
    generation_new_tokens: int = 32
    generation_rounds: int = 11
    threads: int = 1
    """torch intra-op threads."""
    quick: bool = False
    """Smoke run: T = 8, B = 2, V = 256, 2 rounds, a 4 x 4-token generation (ratios meaningless)."""
    out: Path | None = None
    """Where to write the JSON (default ppo_lab/results/llm_logprobs.json)."""


def _kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def mmap_large_allocations() -> None:
    """Have glibc serve every allocation over 64 KiB by mmap and unmap it on free (``mallopt
    M_MMAP_THRESHOLD``; a fixed threshold also stops glibc raising it after frees), so freed
    tensors leave the resident set and ``peak_extra_mib`` sees each call's own peak."""
    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # -3 = M_MMAP_THRESHOLD


def peak_extra_mib(fn):
    """``(fn(), MiB)``: its result, and by how much the call raised the process's resident set
    above where it started."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _kib("VmRSS")
    result = fn()
    return result, (_kib("VmHWM") - before) / 1024


def naive_full_logprobs(model, batch: SequenceBatch, spec: SamplingSpec) -> torch.Tensor:
    """All logits, a float32 log-softmax over ``[B, P + T, V]``, gather, then slice the response."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits  # (B, L, V)
    logp = torch.log_softmax(spec.apply(logits.float()), dim=-1)  # (B, L, V) float32
    picked = logp[:, :-1].gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # (B, L - 1): token i+1
    P = batch.prompt_width
    return torch.where(batch.response_mask, picked[:, P - 1 :], 0.0)  # (B, T)


def tiny_model(arch: str, config: Config, vocab: int):
    torch.manual_seed(0)
    cfg = tiny_config(arch, vocab, n_layer=config.n_layer, d_model=config.d_model, n_head=config.n_head,
                      max_positions=512, eos_token_id=EOS, pad_token_id=PAD)
    cfg.initializer_range = 0.1  # a less uniform next-token distribution than the default 0.02
    return build_model(cfg)


def scoring_batch(B: int, P: int, T: int, vocab: int, seed: int) -> SequenceBatch:
    """Prompts of P//2 … P tokens (left-padded), responses of T//2 … T tokens, no EOS/PAD inside."""
    gen = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(2, vocab, (n,), generator=gen).tolist()  # noqa: E731
    lengths = [max(1, P - i % (P // 2 + 1)) for i in range(B)], [max(1, T - (i * 5) % (T // 2 + 1)) for i in range(B)]
    return SequenceBatch.from_token_lists([draw(n) for n in lengths[0]], [draw(n) for n in lengths[1]], PAD, EOS)


def benchmark_scoring(arch: str, T: int, config: Config, rounds: int, B: int, vocab: int) -> tuple[list[dict], dict]:
    model = tiny_model(arch, config, vocab)
    batch = scoring_batch(B, config.prompt_length, T, vocab, seed=T)
    spec = SamplingSpec(1.0, (PAD,))
    with torch.no_grad():
        fns = {"loop": lambda: reference_loop_logprobs(model, batch, spec),
               "batched": lambda: response_logprobs(model, batch, spec).logprobs,
               "naive_full": lambda: naive_full_logprobs(model, batch, spec)}
        expected = fns["batched"]()
        rows = []
        for name, fn in fns.items():
            logprobs, peak = peak_extra_mib(fn)
            diff = (logprobs - expected).abs().max().item()
            if not diff <= MAX_ABS_DIFF:
                raise AssertionError(f"{name} disagrees with batched ({arch}, T={T}): max |diff| {diff}")
            rows.append({"part": "scoring", "arch": arch, "T": T, "impl": name, "max_abs_diff": diff,
                         "peak_extra_mib": peak})
        times = time_interleaved(fns, rounds)
    medians = {name: statistics.median(ms) for name, ms in times.items()}
    for row in rows:
        ms = times[row["impl"]]
        row.update(median_ms=medians[row["impl"]], min_ms=min(ms), max_ms=max(ms), rounds=len(ms), times_ms=ms)
    entry = {"arch": arch, "T": T, **{f"{n}_ms": medians[n] for n in IMPLS},
             **{f"{r['impl']}_peak_extra_mib": r["peak_extra_mib"] for r in rows},
             "speedup_batched_vs_loop": medians["loop"] / medians["batched"],
             "speedup_batched_vs_naive_full": medians["naive_full"] / medians["batched"]}
    return rows, entry


def benchmark_generation(arch: str, config: Config, rounds: int, B: int, P: int, new: int, vocab: int
                         ) -> tuple[list[dict], dict]:
    model = tiny_model(arch, config, vocab)
    prompt_ids = torch.randint(2, vocab, (B, P), generator=torch.Generator().manual_seed(1))
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[::2, : P // 2] = 0  # half the rows left-padded
    prompt_ids[prompt_mask == 0] = PAD
    spec = SamplingSpec(1.0, (PAD,))
    kw = dict(max_new_tokens=new, eos_token_id=EOS, pad_token_id=PAD)

    def own():
        return generate(model, prompt_ids, prompt_mask, spec, generator=torch.Generator().manual_seed(2), **kw)

    def theirs():
        torch.manual_seed(2)
        return hf_generate(model, prompt_ids, prompt_mask, spec, **kw)

    (a, lp_a), (b, lp_b) = own(), theirs()
    same_tokens = torch.equal(a.input_ids, b.input_ids)
    diff = (lp_a - lp_b).abs().max().item()
    if not (same_tokens and diff <= MAX_ABS_DIFF):
        raise AssertionError(f"the samplers disagree ({arch}): same tokens {same_tokens}, max |Δ logprob| {diff}")
    times = time_interleaved({"own_loop": own, "model_generate": theirs}, rounds)
    medians = {name: statistics.median(ms) for name, ms in times.items()}
    rows = [{"part": "generation", "arch": arch, "impl": name, "median_ms": medians[name], "min_ms": min(ms),
             "max_ms": max(ms), "rounds": len(ms), "times_ms": ms} for name, ms in times.items()]
    entry = {"arch": arch, "B": B, "P": P, "new_tokens": a.response_ids.shape[1], "same_tokens": same_tokens,
             "max_abs_logprob_diff": diff, **{f"{n}_ms": medians[n] for n in SAMPLERS},
             "model_generate_over_own_loop": medians["model_generate"] / medians["own_loop"]}
    return rows, entry


def tables(summary: dict) -> str:
    lines = ["| arch | T | loop (ms) | batched (ms) | naive_full (ms) | × batched vs loop | × batched vs naive "
             "| peak MiB loop / batched / naive |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary["scoring"].values():
        lines.append(f"| {s['arch']} | {s['T']} | {s['loop_ms']:.4g} | {s['batched_ms']:.3g} | {s['naive_full_ms']:.3g} "
                     f"| {s['speedup_batched_vs_loop']:.1f} | {s['speedup_batched_vs_naive_full']:.2f} "
                     f"| {s['loop_peak_extra_mib']:.1f} / {s['batched_peak_extra_mib']:.1f} / "
                     f"{s['naive_full_peak_extra_mib']:.1f} |")
    lines += ["", "| arch | own loop (ms) | model.generate (ms) | model.generate / own loop | same tokens |",
              "|---|---:|---:|---:|---|"]
    for s in summary["generation"].values():
        lines.append(f"| {s['arch']} | {s['own_loop_ms']:.3g} | {s['model_generate_ms']:.3g} "
                     f"| {s['model_generate_over_own_loop']:.2f} | {s['same_tokens']} |")
    return "\n".join(lines)


def main(config: Config) -> Path:
    torch.set_num_threads(config.threads)
    mmap_large_allocations()
    q = config.quick
    lengths = (8,) if q else config.response_lengths
    rounds, B, vocab = (2, 2, 256) if q else (config.rounds, config.batch_size, config.vocab_size)
    gen = (2, 4, 4, 4) if q else (config.generation_rounds, config.generation_batch, config.generation_prompt,
                                  config.generation_new_tokens)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows, scoring, generation = [], {}, {}
    for arch in config.archs:
        for T in lengths:
            part, entry = benchmark_scoring(arch, T, config, rounds, B, vocab)
            rows += part
            scoring[f"{arch} T={T}"] = entry
            print(f"{arch} T={T}: " + ", ".join(f"{n} {entry[f'{n}_ms']:.3g} ms" for n in IMPLS), flush=True)
        part, entry = benchmark_generation(arch, config, gen[0], *gen[1:], vocab)
        rows += part
        generation[arch] = entry
        print(f"{arch} generation: own {entry['own_loop_ms']:.3g} ms, model.generate {entry['model_generate_ms']:.3g} ms",
              flush=True)
    summary = {"load_average_before": load_before, "scoring": scoring, "generation": generation,
               "all_within_tolerance": all(r.get("max_abs_diff", 0) <= MAX_ABS_DIFF for r in rows)
               and all(e["same_tokens"] for e in generation.values())}
    settings = {**dataclasses.asdict(config), "out": None, "response_lengths": list(lengths), "rounds": rounds,
                "batch_size": B, "vocab_size": vocab, "generation_rounds": gen[0], "generation_batch": gen[1],
                "generation_prompt": gen[2], "generation_new_tokens": gen[3], "archs": list(config.archs),
                "dtype": "float32", "device": "cpu", "max_abs_diff": MAX_ABS_DIFF}
    path = write("llm_logprobs", settings, rows, config.out, summary=summary)
    print(f"\nmedian of {rounds} interleaved calls (generation: {gen[0]}), {config.threads} thread(s), "
          f"load average before {load_before}; written to {path}\n\n{tables(summary)}\n\n"
          f"all within tolerance: {summary['all_within_tolerance']}")
    return path


if __name__ == "__main__":
    main(tyro.cli(Config))
