"""The committed CartPole benchmark results are self-consistent: every summary number and ratio
is what the file's own rows give, and every run is stamped with its command.

The runs themselves need Stable-Baselines3 (the ``[bench]`` extra) and minutes of quiet CPU, so
they are not repeated here; these checks catch a summary edited by hand or left stale.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import median  # noqa: E402

RESULTS = ROOT / "ppo_lab/results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["cartpole"])
def test_cartpole_summary_is_what_the_rows_give(name):
    record = _load(name)
    assert record["command"].startswith("python benchmarks/cartpole.py")
    assert record["config"]["torch_threads"] == 1  # each run in its own one-thread process
    rows, summary = record["results"], record["summary"]
    seeds = record["config"]["seeds"]
    for runner, stats in summary["per_runner"].items():
        mine = [r for r in rows if r["runner"] == runner]
        assert [r["seed"] for r in mine] == seeds
        assert stats["seeds"] == len(seeds)
        assert stats["seeds_solved"] == sum(r["steps_to_475"] is not None for r in mine)
        for key in ("steps_to_475", "seconds_to_475", "steps_per_second", "final_return", "peak_rss_mb"):
            assert stats[f"median_{key}"] == median(r[key] for r in mine), (runner, key)
        for r in mine:
            assert math.isclose(r["steps_per_second"], r["total_steps"] / r["seconds"], rel_tol=1e-3)
            assert r["steps_to_475"] is None or r["steps_to_475"] <= r["total_steps"]
    ours, sb3, tuned = (summary["per_runner"][k] for k in ("ppo_lab", "sb3", "ppo_lab-tuned"))
    ratios = summary["ratios"]
    assert ratios["steps_per_second ppo_lab/sb3"] == round(
        ours["median_steps_per_second"] / sb3["median_steps_per_second"], 3)
    assert ratios["steps_to_475 ppo_lab/sb3"] == round(
        ours["median_steps_to_475"] / sb3["median_steps_to_475"], 3)
    assert ratios["seconds_to_475 ppo_lab-tuned/sb3"] == round(
        tuned["median_seconds_to_475"] / sb3["median_seconds_to_475"], 3)
    assert set(summary) == {"per_runner", "ratios"}  # measurements only


def test_pendulum_summary_is_what_the_rows_give():
    record = _load("pendulum")
    assert record["command"].startswith("python benchmarks/pendulum.py")
    rows, summary = record["results"], record["summary"]
    assert [r["seed"] for r in rows] == record["config"]["seeds"]
    assert summary == {
        "median_steps_to_threshold": median(r["steps_to_threshold"] for r in rows),
        "median_final_return": median(r["final_return"] for r in rows),
        "median_steps_per_second": median(r["steps_per_second"] for r in rows),
        "seeds_reaching_threshold": sum(r["steps_to_threshold"] is not None for r in rows),
        "seeds": len(rows),
    }  # measurements only
    for r in rows:
        assert r["steps_to_threshold"] is None or r["steps_to_threshold"] <= r["total_steps"]
        assert len(r["curve"]["global_step"]) == len(r["curve"]["mean_return"]) > 10


def test_cartpole_stages_summary_is_what_the_rows_give():
    record = _load("cartpole_stages")
    assert record["command"].startswith("python benchmarks/cartpole_stages.py")
    config, summary = record["config"], record["summary"]
    stages = [r for r in record["results"] if r["part"] == "stages"]
    cost = [r for r in record["results"] if r["part"] == "step_cost"]
    medians = {}
    for runner in ("ppo_lab", "sb3"):
        mine = [r for r in stages if r["runner"] == runner]
        assert len(mine) == config["runs"]
        for r in mine:  # the timed stages fit inside the run, and the rest is what is left
            assert 0 < r["rollout_seconds"] + r["update_seconds"] <= r["seconds"]
            assert math.isclose(r["other_seconds"], r["seconds"] - r["rollout_seconds"]
                                - r["update_seconds"], abs_tol=2e-3)
            assert abs(r["env_steps"] - config["env_steps"]) <= 256  # whole rollouts of 8 x 32 steps
        medians[runner] = {k: statistics.median(r[k] for r in mine)
                           for k in summary["stage medians"][runner]}
        assert medians[runner] == summary["stage medians"][runner]
        points = sorted((r["batch"], r["us_per_gradient_step"]) for r in cost if r["runner"] == runner)
        assert [b for b, _ in points] == config["batch_sizes"]
        fit = statistics.linear_regression(*zip(*[p for p in points if p[0] in config["line_fit_batch_sizes"]]))
        reported = summary["gradient step = fixed + slope x B"][runner]
        assert reported["intercept_us"] == round(fit.intercept, 1)
        assert reported["slope_us_per_transition"] == round(fit.slope, 3)
        assert reported["us_at_256"] == dict(points)[256]
    for key, value in summary["speedup sb3/ppo_lab"].items():
        assert value == round(medians["sb3"][key] / medians["ppo_lab"][key], 3), key
    by_batch = {(r["runner"], r["batch"]): r["us_per_gradient_step"] for r in cost}
    for batch, value in summary["gradient step speedup sb3/ppo_lab by B"].items():
        assert value == round(by_batch[("sb3", int(batch))] / by_batch[("ppo_lab", int(batch))], 3)


def test_sb3_same_update_summary_is_what_the_rows_give():
    record = _load("sb3_same_update")
    assert record["command"].startswith("python benchmarks/sb3_same_update.py")
    rows, summary = record["results"], record["summary"]
    assert [r["seed"] for r in rows] == record["config"]["seeds"]
    assert all(r["epochs"] == record["config"]["epochs"] for r in rows)
    assert summary["max_abs_weight_diff_after_update"] == max(r["max_abs_weight_diff_after_update"] for r in rows)
    assert summary["min_weight_change_by_update"] == min(r["max_abs_weight_change_by_update"] for r in rows)


def _check_devices_record(record: dict, devices: list[str]) -> None:
    """devices.json: one row per (run, device, N); the summary is what ``summarise`` gives."""
    from devices import summarise

    assert record["command"].startswith("python benchmarks/devices.py")
    config, rows = record["config"], record["results"]
    assert config["devices"] == devices and config["torch_threads"] == 1
    assert sorted((r["run"], r["device"], r["num_envs"]) for r in rows) == sorted(
        (run, d, n) for run in range(config["runs"]) for d in devices for n in config["num_envs"])
    for r in rows:
        assert r["batch_size"] == 32 * r["num_envs"] and r["updates"] == config["updates"][str(r["num_envs"])]
        assert r["steps_per_second"] > 0 and r["us_per_gradient_step"] > 0
        # the two timed stages fit inside the wall-clock time the steps per second come from
        stage_s = (r["rollout_ms_per_update"] + r["update_ms_per_update"]) / 1e3
        assert stage_s <= 1.01 * r["batch_size"] / r["steps_per_second"]
        assert (r["peak_gpu_mib"] is None) == (r["device"] == "cpu")
    assert record["summary"] == json.loads(json.dumps(summarise(rows)))


def test_devices_summary_is_what_the_rows_give():
    record = _load("devices")
    assert record["machine"]["cuda available"] == "True"  # the committed file compares CPU and GPU
    assert len(record["commit"]) == 40  # the code it measured: an earlier commit, kept until re-run
    _check_devices_record(record, ["cpu", "cuda"])
    assert set(record["summary"]["16"]["gpu_speedup"]) == {"steps_per_second", "rollout", "update"}


def test_devices_script_runs_on_this_machine(tmp_path):
    """The script runs as documented (CPU only here unless CUDA is present) and writes a record
    that passes the same checks."""
    import subprocess

    import torch

    out = tmp_path / "devices.json"
    subprocess.run([sys.executable, "benchmarks/devices.py", "--runs", "1", "--num-envs", "16", "64",
                    "--updates", "2", "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    record = json.loads(out.read_text())
    _check_devices_record(record, ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))


def _check_call_overhead_record(record: dict) -> None:
    """call_overhead.json: one row per variant; the summary is what ``summarise`` gives; the
    exact tricks were checked to leave actions and weights identical."""
    from call_overhead import DESIGN, INEXACT, TRICKS, summarise, variants

    assert record["command"].startswith("python benchmarks/call_overhead.py")
    config, rows = record["config"], record["results"]
    assert config["tricks"] == list(TRICKS) and config["design"] == list(DESIGN)
    assert config["torch_threads"] == 1
    assert [r["variant"] for r in rows] == list(variants())
    assert all(r["rounds"] == config["rounds"] and r["us_per_vector_step"] > 0
               and r["us_per_gradient_step"] > 0 for r in rows)
    summary = summarise(rows, config["vector_steps_per_update"], config["gradient_steps_per_update"])
    assert {k: v for k, v in record["summary"].items() if k != "identical"} == json.loads(json.dumps(summary))
    identical = record["summary"]["identical"]
    assert identical["identical_actions"] is True and identical["identical_weights"] is True
    assert identical["tricks"] == sorted(set(TRICKS) - set(INEXACT))
    assert 0 < identical["sigmoid_tanh_max_abs_error"] < 1e-6
    assert 0 <= identical["twin_layers_max_abs_error"] < 1e-5


def test_call_overhead_summary_is_what_the_rows_give():
    _check_call_overhead_record(_load("call_overhead"))


def test_call_overhead_script_runs_on_this_machine(tmp_path):
    """The script runs as documented, with its before/after identity check, and writes a record
    that passes the same checks."""
    import subprocess

    out = tmp_path / "call_overhead.json"
    subprocess.run([sys.executable, "benchmarks/call_overhead.py", "--rounds", "2", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True)
    _check_call_overhead_record(json.loads(out.read_text()))
