"""``ppo-lab rlhf`` (ppo_lab.llm.cli): --help, smoke runs of sft and rm into one output folder,
and every error path ending with exit status 2 and a message naming the field."""

from __future__ import annotations

import json

import pytest

from ppo_lab.cli import main as ppo_lab_main
from ppo_lab.llm.cli import STAGES, main

SFT_SMALL = ["--n-layer", "1", "--d-model", "32", "--n-head", "2", "--max-steps", "3",
             "--num-demonstrations", "128", "--num-eval", "16", "--batch-size", "16"]
RM_SMALL = ["--max-steps", "3", "--num-pairs", "64", "--num-eval", "16", "--batch-size", "16",
            "--num-policy-pairs", "8"]


def test_help_lists_stages_presets_and_flags(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "sft" in text and "rm" in text and "STAGE PRESET" in text
    assert main([]) == 2  # no stage: usage, and a failure status
    assert ppo_lab_main(["rlhf", "--help"]) == 0
    assert "Stages:" in capsys.readouterr().out
    assert main(["sft", "--help"]) == 0
    assert "tiny" in capsys.readouterr().out
    assert main(["sft", "tiny", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--data", "--device", "--dtype", "--seed", "--out-dir", "--arch",
                 "--pad-equals-eos"):
        assert flag in text, flag
    assert "Causal LM to start from" in text  # field docstrings are the help
    assert main(["rm", "tiny", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--data", "--prompts", "--label-noise", "--out-dir"):
        assert flag in text, flag


def test_sft_then_rm_into_one_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert ppo_lab_main(["rlhf", "sft", "tiny", *SFT_SMALL, "--out-dir", str(out)]) == 0
    assert "sft: 3 steps" in capsys.readouterr().out
    assert main(["rm", "tiny", "--model", str(out / "sft"), *RM_SMALL, "--out-dir", str(out)]) == 0
    assert "reward model: 3 steps" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"tokenizer", "sft", "reward"}
    record = json.loads((out / "reward" / "metrics.json").read_text())
    assert record["command"].startswith("ppo-lab rlhf rm tiny --model")
    assert record["config"]["max_steps"] == 3 and len(record["history"]) == 3
    assert 0.0 <= record["summary"]["policy_pair_agreement"] <= 1.0
    assert (out / "sft" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_default_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sft", "tiny", *SFT_SMALL, "--seed", "4"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("rlhf-tiny-seed4-") and (run / "sft" / "config.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["dpo", "tiny"], "unknown stage 'dpo'"),
    (["sft", "tiny", "--batch-size", "0"], "batch_size: must be a positive integer"),
    (["sft", "tiny", "--model", "./no/such/model"], "model: no such model directory"),
    (["rm", "tiny", "--model", "/no/such/sft"], "model: no such model directory"),
    (["rm", "tiny", "--label-noise", "0.7"], "label_noise: must be < 0.5"),
])
def test_config_errors_exit_2_naming_the_field(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_preset_and_flag_exit_2():
    assert main(["sft", "huge"]) == 2
    assert main(["sft", "tiny", "--no-such-flag", "1"]) == 2


def test_data_errors_exit_2_naming_the_flag(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["sft", "tiny", *SFT_SMALL, "--data", str(empty), "--out-dir", str(tmp_path)]) == 2
    assert "data: " in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    assert main(["sft", "tiny", *SFT_SMALL, "--data", str(broken), "--out-dir", str(tmp_path)]) == 2
    assert "broken.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert main(["sft", "tiny", *SFT_SMALL, "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "data: no such file" in capsys.readouterr().err


def test_nan_loss_exits_2(tmp_path, capsys):
    assert main(["sft", "tiny", *SFT_SMALL, "--learning-rate", "1e30", "--max-grad-norm", "None",
                 "--out-dir", str(tmp_path)]) == 2
    assert "learning_rate: the SFT loss is " in capsys.readouterr().err


def test_every_stage_has_a_tiny_preset():
    assert set(STAGES) >= {"sft", "rm"}
    for stage in STAGES.values():
        assert "tiny" in stage.presets
