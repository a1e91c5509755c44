"""ppo_lab.llm.ppo, §7: the PPO-RLHF trainer on tiny random models (fast, CPU).

The ratio test (ratio = 1 on every response token at the first minibatch of every iteration)
catches most rollout/trainer mismatches; the others pin GAE at the response boundary, whitening
over real tokens, a step that lowers the surrogate, the whole update against a hand-assembled
loss, and the errors that name the field to change.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from ppo_lab.llm import ppo
from ppo_lab.llm.logprobs import response_logprobs
from ppo_lab.llm.models import (build_model, response_values, sampling_spec, tiny_config,
                                token_scalars)
from ppo_lab.llm.ppo import RLHFConfig, token_advantages, train
from ppo_lab.llm.rollout import generate
from ppo_lab.llm.sequences import SequenceBatch, left_pad
from ppo_lab.llm.task import ReviewTask, train_tokenizer

SMALL = dict(iterations=3, batch_size=8, num_minibatches=2, ppo_epochs=2, max_new_tokens=8,
             learning_rate=1e-3, temperature=0.7, num_prompts=64)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def _models(tokenizer, arch="gpt2", dtype=torch.float32, seed=0):
    """A tiny random policy, its reference copy and a reward model (one label), all in ``dtype``."""
    torch.manual_seed(seed)
    config = tiny_config(arch, len(tokenizer), n_layer=1, d_model=32, n_head=2, max_positions=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    policy = build_model(config).to(dtype)
    ref = copy.deepcopy(policy)
    config.num_labels = 1
    reward = AutoModelForSequenceClassification.from_config(config).to(dtype).eval()
    return policy, ref, reward


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_ratio_is_one_at_the_first_minibatch_of_every_iteration(tokenizer, arch, dtype, tol):
    policy, ref, reward = _models(tokenizer, arch, dtype)
    config = RLHFConfig(**SMALL)  # temperature 0.7; review prompts differ in length: left padding
    widths = {len(ids) for ids in tokenizer(ReviewTask().prompts(64, seed=config.task_seed))["input_ids"]}
    assert len(widths) > 1
    result = train(config, policy=policy, ref_model=ref, reward_model=reward, tokenizer=tokenizer)
    errors = [row["policy/ratio_error"] for row in result.history]
    assert len(errors) == config.iterations and max(errors) <= tol, errors
    assert result.history[-1]["policy/approx_kl"] > 1e-6  # the policy did move between iterations


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ratio_is_one_under_bf16_autocast(tokenizer, arch):
    """--dtype bf16: training runs under autocast, so old log-probs come from one scoring pass
    in that precision (the float32 sampler's would put the first ratio ~1e-3 off)."""
    policy, ref, reward = _models(tokenizer, arch)
    config = RLHFConfig(**SMALL, dtype="bf16")
    result = train(config, policy=policy, ref_model=ref, reward_model=reward, tokenizer=tokenizer)
    errors = [row["policy/ratio_error"] for row in result.history]
    # with the sampler's float32 log-probs instead, the error is ~1e-3 on these tiny models
    assert len(errors) == config.iterations and max(errors) <= 1e-4, errors


def test_ratio_test_detects_a_temperature_mismatch(tokenizer):
    """The control for the test above: scoring at τ = 1 what was sampled at τ = 0.7 is caught."""
    policy, _, _ = _models(tokenizer)
    ids, mask = left_pad(tokenizer(ReviewTask().prompts(8, seed=0))["input_ids"], tokenizer.pad_token_id)
    batch, logprobs = generate(policy, ids, mask, sampling_spec(tokenizer, 0.7), max_new_tokens=8,
                               eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id,
                               generator=torch.Generator().manual_seed(0))
    scored = response_logprobs(policy, batch, sampling_spec(tokenizer, 1.0)).logprobs
    ratio = torch.exp(scored - logprobs)
    assert float(torch.where(batch.response_mask, (ratio - 1).abs(), 0).max().detach()) > 1e-2


def _hand_gae(rewards, values, lengths, gamma, lam):
    """Per-row loop over real tokens only: δ_t = r_t + γ V_{t+1} − V_t with V past the end = 0."""
    out = torch.zeros_like(rewards)
    for b, n in enumerate(lengths.tolist()):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1] if t + 1 < n else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            out[b, t] = running
    return out


def test_gae_never_crosses_the_response_boundary_and_whitening_ignores_padding():
    torch.manual_seed(0)
    B, T = 5, 7
    lengths = torch.tensor([7, 1, 4, 6, 2])
    mask = torch.arange(T) < lengths[:, None]
    rewards, values = torch.randn(B, T, dtype=torch.float64), torch.randn(B, T, dtype=torch.float64)
    garbage_r = torch.where(mask, rewards, 1e6)
    garbage_v = torch.where(mask, values, torch.nan)  # padding values never reach a real token
    advantages, returns = token_advantages(garbage_r, garbage_v, mask, gamma=0.9, gae_lambda=0.8,
                                           whiten=False)
    expected = _hand_gae(rewards, values, lengths, 0.9, 0.8)
    torch.testing.assert_close(torch.where(mask, advantages, 0), expected)
    torch.testing.assert_close(torch.where(mask, returns, 0), torch.where(mask, expected + values, 0))
    # the last real token: r − V, no bootstrap from whatever follows
    last = lengths - 1
    rows = torch.arange(B)
    torch.testing.assert_close(advantages[rows, last], rewards[rows, last] - values[rows, last])

    whitened, _ = token_advantages(garbage_r, garbage_v, mask, gamma=0.9, gae_lambda=0.8, whiten=True)
    real = expected[mask]
    torch.testing.assert_close(whitened[mask], (real - real.mean()) / torch.sqrt(real.var() + 1e-8))
    assert torch.equal(whitened[~mask], torch.zeros_like(whitened[~mask]))


def _fixed_rollout(tokenizer, policy, reward, n=8, T=6, seed=0):
    spec = sampling_spec(tokenizer, 0.7)
    ids, mask = left_pad(tokenizer(ReviewTask().prompts(n, seed=seed))["input_ids"], tokenizer.pad_token_id)
    batch, logprobs = generate(policy, ids, mask, spec, max_new_tokens=T,
                               eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id,
                               generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        values = response_values(token_scalars(reward, batch), batch)
    return spec, batch, logprobs, values


def test_a_ppo_step_lowers_the_surrogate_on_a_fixed_batch(tokenizer):
    policy, _, reward = _models(tokenizer)
    spec, batch, old_logprobs, old_values = _fixed_rollout(tokenizer, policy, reward)
    advantages = torch.where(batch.response_mask, torch.randn(batch.response_mask.shape), 0.0)
    config = RLHFConfig(batch_size=len(batch), num_minibatches=1, ppo_epochs=1, learning_rate=1e-3)

    def surrogate():
        with torch.no_grad():
            ratio = torch.exp(response_logprobs(policy, batch, spec).logprobs - old_logprobs)
        return -float((ratio * advantages)[batch.response_mask].mean())

    before = surrogate()
    assert math.isclose(before, -float(advantages[batch.response_mask].mean()), abs_tol=1e-6)
    optimizer = torch.optim.Adam([*policy.parameters(), *reward.parameters()], lr=1e-3, eps=1e-5)
    ppo._optimise(policy, reward, optimizer, batch, spec, old_logprobs, old_values, advantages,
                  old_values, config, torch.Generator().manual_seed(0), kl_coef=0.0)
    assert surrogate() < before - 1e-3


def test_one_epoch_with_beta_zero_equals_a_hand_assembled_loss(tokenizer):
    """One epoch, one minibatch, β = 0: the trainer's update equals Adam on the PPO loss written
    out by hand here — clipped ratio term, clipped value term, gradient clipping."""
    policy, _, reward = _models(tokenizer)
    value_model = copy.deepcopy(reward)
    spec, batch, old_logprobs, old_values = _fixed_rollout(tokenizer, policy, value_model)
    mask = batch.response_mask
    torch.manual_seed(1)
    advantages = torch.where(mask, torch.randn(mask.shape), 0.0)
    returns = torch.where(mask, old_values + 0.5 * torch.randn(mask.shape), 0.0)
    config = RLHFConfig(batch_size=len(batch), num_minibatches=1, ppo_epochs=1, clip_eps=0.2,
                        vf_clip_eps=0.2, vf_coef=0.1, max_grad_norm=0.5, kl_coef=0.0)
    p2, v2 = copy.deepcopy(policy), copy.deepcopy(value_model)

    opt = torch.optim.Adam([*policy.parameters(), *value_model.parameters()], lr=1e-2, eps=1e-5)
    # perturb once so the first step's ratio is not 1 everywhere (the clip is exercised)
    with torch.no_grad():
        for p, q in zip(policy.parameters(), p2.parameters()):
            noise = 0.05 * torch.randn_like(p)
            p.add_(noise)
            q.add_(noise)
    before = next(policy.parameters()).detach().clone()
    ppo._optimise(policy, value_model, opt, batch, spec, old_logprobs, old_values, advantages,
                  returns, config, torch.Generator().manual_seed(0), kl_coef=0.0)

    params = [*p2.parameters(), *v2.parameters()]
    opt2 = torch.optim.Adam(params, lr=1e-2, eps=1e-5)
    logits = p2(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids).logits
    P, T = batch.prompt_width, mask.shape[1]
    logits = logits[:, P - 1 : P + T - 1] / 0.7
    logits = logits.index_fill(-1, torch.tensor(spec.excluded_token_ids), -math.inf)
    logprobs = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    policy_loss = -torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)[mask].mean()
    hidden = v2.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids).last_hidden_state
    values = v2.score(hidden).squeeze(-1)[:, P - 1 : P + T - 1]
    clipped = old_values + (values - old_values).clamp(-0.2, 0.2)
    value_loss = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)[mask].mean()
    (policy_loss + 0.1 * value_loss).backward()
    torch.nn.utils.clip_grad_norm_(params, 0.5)
    opt2.step()
    for (name, a), b in zip([*policy.named_parameters(), *value_model.named_parameters()], params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(next(policy.parameters()), before)  # the update did move the weights


def test_reward_fn_sees_text_with_special_tokens_and_nan_rewards_are_an_error(tokenizer):
    policy, ref, _ = _models(tokenizer)
    seen = []

    def reward_fn(prompts, responses, *, eos):
        seen.extend(zip(responses, eos))
        return torch.tensor([float(len(r)) for r in responses])

    config = RLHFConfig(**{**SMALL, "iterations": 1, "max_new_tokens": 24, "temperature": 1.0},
                        value_init="sft", model=None)
    with pytest.raises(ValueError, match="value_init"):
        train(config, policy=policy, ref_model=ref, reward_fn=reward_fn, tokenizer=tokenizer)
    value = AutoModelForSequenceClassification.from_config(
        policy.config.__class__(**{**policy.config.to_dict(), "num_labels": 1})).eval()
    train(config, policy=policy, ref_model=ref, reward_fn=reward_fn, tokenizer=tokenizer,
          value_model=value)
    ended = [text for text, eos in seen if eos]
    assert ended and all(text.endswith(tokenizer.eos_token) for text in ended)

    def nan_fn(prompts, responses, *, eos):
        return torch.full((len(prompts),), math.nan)

    with pytest.raises(ValueError, match="reward_fn"):
        train(config, policy=policy, ref_model=ref, reward_fn=nan_fn, tokenizer=tokenizer,
              value_model=value)


def test_value_head_design_trains_through_one_trunk(tokenizer):
    policy, ref, reward = _models(tokenizer)
    config = RLHFConfig(**{**SMALL, "iterations": 2}, value_design="head", reference="old")
    result = train(config, policy=policy, ref_model=ref, reward_model=reward, tokenizer=tokenizer)
    head = result.value_model
    assert isinstance(head, ppo.ValueHead) and float(head.linear.weight.detach().abs().sum()) > 0
    assert all(row["policy/ratio_error"] <= 1e-5 for row in result.history)
    assert all("policy/kl" in row for row in result.history)  # KL to the old policy, in the loss


@pytest.mark.parametrize("change,field", [
    (dict(batch_size=8, num_minibatches=3), "num_minibatches"),
    (dict(batch_size=8, num_minibatches=8), "num_minibatches"),
    (dict(reference="nope"), "reference"),
    (dict(checkpoint_every=2), "out_dir"),
    (dict(gold=True, prompts="x.jsonl"), "gold"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        RLHFConfig(**change)


def test_missing_paths_name_the_field(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="^model:"):
        train(RLHFConfig(model=str(tmp_path / "missing")))
    policy, ref, _ = _models(tokenizer)
    with pytest.raises(ValueError, match="^reward_model:"):
        train(RLHFConfig(reward_model=str(tmp_path / "nope")), policy=policy, ref_model=ref,
              tokenizer=tokenizer)
    with pytest.raises(ValueError, match="^prompts:"):
        train(RLHFConfig(prompts=str(tmp_path / "none.jsonl")), policy=policy, ref_model=ref,
              tokenizer=tokenizer, reward_fn=lambda p, r, *, eos: torch.zeros(len(p)))


def test_models_that_do_not_share_the_policys_tokenizer_are_an_error(tmp_path, tokenizer):
    """Scores of the wrong tokens are never computed silently: a reward model whose embedding is
    smaller than the tokenizer, or whose saved tokenizer gives a token another id, is a
    ValueError naming the field; the same directory saved with the policy's tokenizer trains."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    policy, ref, reward = _models(tokenizer)
    config = RLHFConfig(**SMALL)
    small_config = copy.deepcopy(reward.config)
    small_config.vocab_size = len(tokenizer) - 1
    small = AutoModelForSequenceClassification.from_config(small_config).eval()
    with pytest.raises(ValueError, match=f"^reward_model: its embedding has {len(tokenizer) - 1} rows"):
        train(config, policy=policy, ref_model=ref, reward_model=small, tokenizer=tokenizer)

    vocab = tokenizer.get_vocab()
    a, b = sorted(vocab, key=vocab.get)[-2:]  # two ordinary tokens, ids swapped
    swapped = {**vocab, a: vocab[b], b: vocab[a]}
    core = Tokenizer(models.WordLevel(swapped, unk_token=tokenizer.unk_token))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    directory = tmp_path / "reward"
    reward.save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token=tokenizer.pad_token,
                            eos_token=tokenizer.eos_token, unk_token=tokenizer.unk_token).save_pretrained(directory)
    moved = re.escape(f"(2 tokens, e.g. {a!r} is {vocab[b]} there and {vocab[a]} here)")
    with pytest.raises(ValueError, match=f"^reward_model: the tokenizer saved in .*{moved}"):
        train(config.replace(reward_model=str(directory)), policy=policy, ref_model=ref, tokenizer=tokenizer)
    tokenizer.save_pretrained(directory)  # the policy's own tokenizer: accepted
    result = train(config.replace(reward_model=str(directory), iterations=1), policy=policy, ref_model=ref,
                   tokenizer=tokenizer)
    assert len(result.history) == 1


def test_chat_template_wraps_each_prompt_as_a_user_turn(tokenizer):
    """chat_template=True: the rollout's prompts are the tokenizer's chat template around each
    prompt, ending with the assistant's header, tokenised without extra special tokens; the run
    trains (ratio 1 at the first minibatch); a tokenizer without a template is an error naming
    the field."""
    policy, ref, reward = _models(tokenizer)
    config = RLHFConfig(**SMALL, chat_template=True)
    with pytest.raises(ValueError, match="^chat_template: the tokenizer has no chat template"):
        train(config, policy=policy, ref_model=ref, reward_model=reward, tokenizer=tokenizer)
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = ("{% for m in messages %}{{ bos_token }}review : {{ m['content'] }}{{ eos_token }}{% endfor %}"
                          "{% if add_generation_prompt %}{{ bos_token }}{% endif %}")
    seen = []
    real_generate = ppo.generate

    def spy(model, prompt_ids, prompt_mask, *args, **kwargs):
        seen.append((prompt_ids, prompt_mask))
        return real_generate(model, prompt_ids, prompt_mask, *args, **kwargs)

    ppo.generate = spy
    try:
        result = train(config.replace(iterations=1), policy=policy, ref_model=ref, reward_model=reward,
                       tokenizer=chat)
    finally:
        ppo.generate = real_generate
    ids, mask = seen[0]
    first = ids[0][mask[0].bool()].tolist()
    texts = ppo._prompts(config)
    expected = [chat(f"{chat.bos_token}review : {text}{chat.eos_token}{chat.bos_token}", add_special_tokens=False)["input_ids"]
                for text in texts]
    assert first in expected  # one of the prompts, inside the template, no special tokens added twice
    assert first[0] == chat.bos_token_id and first[-1] == chat.bos_token_id
    assert result.history[0]["policy/ratio_error"] < 1e-5


def test_stop_token_ids_end_responses_besides_eos(tokenizer):
    """stop_token_ids: a frequent word also ends a response (kept, counted in the length, eos
    True), so the same seed's first rollout has shorter responses and more of them end; the
    ratio is still 1. Ids that are not token ids are errors naming the field."""
    policy, ref, reward = _models(tokenizer)
    config = RLHFConfig(**SMALL).replace(iterations=1)
    plain = train(config, policy=copy.deepcopy(policy), ref_model=ref, reward_model=reward, tokenizer=tokenizer)
    stop = tokenizer.convert_tokens_to_ids("the")
    assert stop != tokenizer.unk_token_id
    stopped = train(config.replace(stop_token_ids=(stop,)), policy=copy.deepcopy(policy), ref_model=ref,
                    reward_model=reward, tokenizer=tokenizer)
    a, b = plain.history[0], stopped.history[0]
    assert b["response/eos_fraction"] > a["response/eos_fraction"]
    assert b["response/length"] < a["response/length"]
    assert b["policy/ratio_error"] < 1e-5
    with pytest.raises(ValueError, match="^stop_token_ids: must be token ids"):
        RLHFConfig(stop_token_ids=(-1,))
    with pytest.raises(ValueError, match="^stop_token_ids: \\[100000\\] outside"):
        train(config.replace(stop_token_ids=(100_000,)), policy=policy, ref_model=ref, reward_model=reward,
              tokenizer=tokenizer)


def test_empty_responses_are_an_error():
    batch = SequenceBatch.from_parts(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3),
                                     torch.zeros(2, 4, dtype=torch.long), torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="^max_new_tokens: .*rows \\[1\\]"):
        ppo._check_rollout(batch)


def test_lora_run_stopped_and_resumed_equals_uninterrupted(tmp_path, tokenizer):
    """lora_r > 0: the checkpoint's policy/ holds the adapters only (save_pretrained of the peft
    model; the base stays the frozen reference); stopped after 1 iteration and resumed in a new
    train() to 3, the weights, log and β equal those of a run never stopped (§8)."""
    times = {"time", "tokens_per_second", "time/generate", "time/score", "time/train",
             "time/iteration"}
    config = RLHFConfig(**SMALL, lora_r=4, adaptive_kl=True, warmup_iterations=3,
                        out_dir=str(tmp_path))

    def run(**changes):
        policy, ref, reward = _models(tokenizer)  # fresh objects: add_lora changes the model
        return train(config.replace(**changes), policy=policy, ref_model=ref, reward_model=reward,
                     tokenizer=tokenizer)

    clean = run(out_dir=None)
    run(iterations=1, checkpoint_every=1)
    saved = tmp_path / ppo.CHECKPOINT_DIR / "policy"
    assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    resumed = run(checkpoint_every=1, resume=True)
    trained = [n for n, p in resumed.policy.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    for a, b in ((resumed.policy, clean.policy), (resumed.value_model, clean.value_model)):
        want = dict(b.named_parameters())
        got = dict(a.named_parameters())
        assert got.keys() == want.keys()
        for name, w in want.items():
            assert torch.equal(got[name], w), name
    drop = lambda rows: [{k: v for k, v in r.items() if k not in times} for r in rows]  # noqa: E731
    assert len(resumed.history) == 3 and drop(resumed.history) == drop(clean.history)
    assert resumed.history[-1]["objective/kl_coef"] != config.kl_coef  # adaptive β restored
    with pytest.raises(ValueError, match="^lora_r: .* 4, this run has 8"):
        run(lora_r=8, checkpoint_every=1, resume=True)
    # a checkpoint written before a config field existed resumes with that field's default
    state_path = tmp_path / ppo.CHECKPOINT_DIR / "state.pt"
    state = torch.load(state_path, weights_only=False)
    del state["config"]["chat_template"], state["config"]["ent_coef"]
    torch.save(state, state_path)
    assert len(run(checkpoint_every=1, resume=True).history) == 3
    with pytest.raises(ValueError, match="^ent_coef: .* 0.0, this run has 0.01"):
        run(checkpoint_every=1, resume=True, ent_coef=0.01)
