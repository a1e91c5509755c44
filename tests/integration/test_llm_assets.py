"""The committed tiny tokenizer, SFT policy and reward model (ppo_lab/llm/assets/tiny): they load
with the standard from_pretrained calls, ship as package data, and the two commands that wrote
them reproduce them bit for bit (slow: about two minutes of one CPU thread)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from ppo_lab.llm.assets import TINY_NAMES, tiny_path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "ppo_lab" / "llm" / "assets"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def test_tiny_models_load_with_from_pretrained():
    tokenizer = AutoTokenizer.from_pretrained(tiny_path("tokenizer"))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id != tokenizer.eos_token_id
    policy = AutoModelForCausalLM.from_pretrained(tiny_path("sft"))
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_path("reward"))
    assert type(policy).__name__ == "GPT2LMHeadModel" and reward.config.num_labels == 1
    assert policy.config.vocab_size == len(tokenizer)
    for name in TINY_NAMES:
        assert AutoTokenizer.from_pretrained(tiny_path(name)).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ValueError, match="name: expected one of"):
        tiny_path("ppo")


def test_package_data_ships_every_model_file():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["ppo_lab.llm.assets"]
    shipped = {p.relative_to(ASSETS).as_posix() for p in ASSETS.rglob("*")
               if p.is_file() and any(fnmatch(p.relative_to(ASSETS).as_posix(), pat) for pat in patterns)}
    for name in TINY_NAMES:
        for file in TOKENIZER_FILES:
            assert f"tiny/{name}/{file}" in shipped
    for name in ("sft", "reward"):
        assert {f"tiny/{name}/config.json", f"tiny/{name}/model.safetensors"} <= shipped
    assert sum((ASSETS / f).stat().st_size for f in shipped) < 10 * 2**20  # a few MB


def _run(argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "ppo_lab.cli", "rlhf", *argv], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_commands_reproduce_the_committed_assets_bit_for_bit(tmp_path):
    _run(["sft", "tiny", "--out-dir", str(tmp_path)])
    _run(["rm", "tiny", "--model", str(tmp_path / "sft"), "--out-dir", str(tmp_path)])
    for name in ("sft", "reward"):
        fresh = load_file(tmp_path / name / "model.safetensors")
        committed = load_file(tiny_path(name) / "model.safetensors")
        assert fresh.keys() == committed.keys(), name
        for key in committed:
            assert torch.equal(fresh[key], committed[key]), f"{name}: {key}"
    for name in TINY_NAMES:
        for file in TOKENIZER_FILES:
            fresh, committed = (tmp_path / name / file).read_bytes(), (tiny_path(name) / file).read_bytes()
            if name == "reward" and file == "tokenizer_config.json":
                # A tokenizer loaded with from_pretrained (the SFT one, here) saves how it was
                # loaded ("local_files_only" follows HF_HUB_OFFLINE); the rest must be equal.
                fresh, committed = (_without_load_flags(x) for x in (fresh, committed))
            assert fresh == committed, f"{name}/{file}"


def _without_load_flags(text: bytes) -> dict:
    config = json.loads(text)
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    return config
