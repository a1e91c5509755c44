"""Kill an RLHF training process with SIGKILL mid-run and resume it in a fresh process: the final
policy, value model, optimiser state and log equal those of a run never interrupted (CPU, §7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from ppo_lab.llm.models import build_model, tiny_config
from ppo_lab.llm.ppo import CHECKPOINT_DIR, RLHFConfig
from ppo_lab.llm.task import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "import json, sys; from ppo_lab.llm.ppo import RLHFConfig, train; " \
         "train(RLHFConfig(**json.loads(sys.argv[1])))"
BOOKKEEPING_TIMES = {"time", "tokens_per_second", "time/generate", "time/score", "time/train",
                     "time/iteration"}


def _write_models(directory: Path) -> None:
    tokenizer = train_tokenizer(save_dir=directory / "policy")
    torch.manual_seed(0)
    config = tiny_config("gpt2", len(tokenizer), n_layer=1, d_model=32, n_head=2, max_positions=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    build_model(config).save_pretrained(directory / "policy")
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory / "reward")


def _start(config: RLHFConfig) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(config.to_dict())], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()[-3000:]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    _write_models(tmp_path)
    config = RLHFConfig(model=str(tmp_path / "policy"), reward_model=str(tmp_path / "reward"),
                        iterations=6, batch_size=8, num_minibatches=2, ppo_epochs=2,
                        max_new_tokens=8, learning_rate=1e-3, temperature=0.7, adaptive_kl=True,
                        warmup_iterations=2, anneal_lr=True, checkpoint_every=1, num_prompts=64,
                        out_dir="set below")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    state = killed / CHECKPOINT_DIR / "state.pt"

    process = _start(config.replace(out_dir=str(killed)))
    deadline = time.monotonic() + 300
    while not state.exists():
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = torch.load(state, weights_only=True)  # atomic: never a torn file
    assert 1 <= saved["iteration"] < config.iterations, "the kill must land mid-run"

    _finish(_start(config.replace(out_dir=str(killed), resume=True)))
    _finish(_start(config.replace(out_dir=str(clean))))

    a, b = killed / CHECKPOINT_DIR, clean / CHECKPOINT_DIR
    for part in ("policy", "value"):
        resumed, uninterrupted = (load_file(d / part / "model.safetensors") for d in (a, b))
        assert resumed.keys() == uninterrupted.keys()
        for key in uninterrupted:
            assert torch.equal(resumed[key], uninterrupted[key]), (part, key)
    resumed, uninterrupted = (torch.load(d / "state.pt", weights_only=True) for d in (a, b))
    assert resumed["iteration"] == uninterrupted["iteration"] == config.iterations
    assert resumed["kl_coef"] == uninterrupted["kl_coef"] != config.kl_coef  # adaptive β moved
    for key, moments in uninterrupted["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(resumed["optimizer"]["state"][key][name], value), (key, name)
    drop = lambda rows: [{k: v for k, v in r.items() if k not in BOOKKEEPING_TIMES} for r in rows]  # noqa: E731
    assert drop(resumed["history"]) == drop(uninterrupted["history"])
