"""ppo_lab.scale on 2 gloo CPU ranks launched by torchrun: DDP and FSDP2 train exactly as one
process on the same global batch (§8).

One torchrun launch (``scale_worker.py ddp fsdp trainer``) computes everything; the tests read each rank's
results. A second test starts two torchrun launchers with ``--nnodes 2`` (two "machines" on
127.0.0.1) and checks they form one 2-rank job that trains like one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("scale_worker.py")
TOL = dict(rtol=1e-4, atol=1e-6)  # float32; the all-reduce sums in another order


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(directory: Path) -> list[dict]:
    return [torch.load(directory / f"results_rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("scale")
    cmd = _torchrun("--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                    str(WORKER), str(out), "ddp", "fsdp", "trainer")
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _load(out)


def _assert_grads_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=lambda m: f"{name}: {m}")


def test_ddp_gradients_equal_single_process_on_the_global_batch(results):
    for res in results:
        assert res["world_size"] == 2
        _assert_grads_equal(res["ddp"], res["single"])


def test_accumulation_two_micro_batches_on_two_ranks_equals_one_batch(results):
    for res in results:
        _assert_grads_equal(res["ddp_accum2"], res["single"])
        assert res["ddp_accum2_stats"]["loss"] == pytest.approx(res["single_stats_loss"], rel=1e-5)


def test_training_forward_through_module_skips_the_all_reduce(results):
    # Each rank keeps the gradient of its own half: different on the two ranks, and not the
    # global gradient — the failure DDP gives no error for.
    r0, r1 = (res["module_forward"] for res in results)
    assert max((r0[k] - r1[k]).abs().max().item() for k in r0) > 1e-3
    assert max((r0[k] - results[0]["single"][k]).abs().max().item() for k in r0) > 1e-3


def test_weights_identical_across_ranks_after_steps_with_kl_early_stop(results):
    r0, r1 = results
    assert r0["stopped_at"] == r1["stopped_at"] and r0["stopped_at"] is not None and r0["stopped_at"] >= 2
    assert r0["approx_kl"] == r1["approx_kl"]  # the all-reduced statistic, bit for bit
    for name, w in r0["weights_after_steps"].items():
        assert torch.equal(w, r1["weights_after_steps"][name]), name


def test_global_statistics_equal_those_of_the_concatenated_batch(results):
    for res in results:
        torch.testing.assert_close(res["whiten_global"], res["whiten_single"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["mean_global"], res["mean_single"], rtol=1e-12, atol=1e-12)
        # weights 1 and 2, values 1 and 2: (1·1 + 2·2) / 3
        assert res["stats"]["kl"] == pytest.approx(5 / 3)


def test_generation_runs_on_the_module_behind_ddp(results):
    r0, r1 = results
    assert r0["generated"].shape == (2, r0["generated"].shape[1]) and torch.equal(r0["generated"], r1["generated"])


def test_fsdp2_loss_and_gradients_equal_single_process(results):
    for res in results:
        assert res["fsdp_stats"]["loss"] == pytest.approx(res["fsdp_single_loss"], rel=1e-5)
        _assert_grads_equal(res["fsdp"], res["fsdp_single"])


def test_fsdp2_checkpoint_resume_equals_uninterrupted(results):
    for res in results:
        assert res["resumed"].keys() == res["uninterrupted"].keys()
        for name, w in res["uninterrupted"].items():
            assert torch.equal(res["resumed"][name], w), name


def test_fsdp2_generation_unshards_then_reshards(results):
    for res in results:
        assert torch.equal(res["fsdp_generated"], res["plain_generated"])
        assert res["fsdp_sharded_after_generation"]


def test_two_nodes_on_one_machine_train_as_one_two_rank_job(tmp_path):
    port = str(_free_port())
    launchers = [subprocess.Popen(
        _torchrun("--nnodes", "2", "--node-rank", str(i), "--nproc-per-node", "1",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--master-addr", "127.0.0.1", "--master-port", port,
                  str(WORKER), str(tmp_path), "ddp"),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for p in launchers:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-4000:]
    r0, r1 = _load(tmp_path)
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    _assert_grads_equal(r0["ddp"], r0["single"])
    _assert_grads_equal(r1["ddp_accum2"], r1["single"])
    for name, w in r0["weights_after_steps"].items():
        assert torch.equal(w, r1["weights_after_steps"][name]), name


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_rlhf_trainer_on_two_ranks_keeps_the_ranks_identical(results, name):
    r0, r1 = (res[f"trainer_{name}"] for res in results)
    assert r0["weights"].keys() == r1["weights"].keys() and r0["weights"]
    for key, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][key]), key
    # The logged statistics are all-reduced: the same numbers on both ranks.
    for row0, row1 in zip(r0["history"], r1["history"]):
        assert row0["objective/kl"] == row1["objective/kl"] and row0["epochs"] == row1["epochs"]
        assert row0["policy/approx_kl"] == row1["policy/approx_kl"]
    if name == "ddp":  # target_kl 0.002 stops an epoch early, on both ranks at once
        assert any(row["epochs"] < 2 for row in r0["history"])
