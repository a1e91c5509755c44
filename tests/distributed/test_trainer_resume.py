"""The RLHF trainer's checkpoints under torchrun (2 gloo CPU ranks, §8): a run stopped after a
checkpoint and resumed by a new torchrun launch ends with the same weights, log and evaluations
as a run never stopped — DDP (rank-0 ``save_pretrained`` + optimiser) and FSDP2
(``torch.distributed.checkpoint``; also with LoRA and a value head), each rank with its own random
streams. A checkpoint written
by 2 processes refuses to resume in 1.

Two launches of ``resume_worker.py`` (``first``, then ``resume``) compute everything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resume_worker import ITERATIONS, MODES, STOP, config  # noqa: E402
from test_scale_distributed import _env, _free_port, _torchrun  # noqa: E402

from ppo_lab.llm.ppo import CHECKPOINT_DIR, train  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("resume_worker.py")
TIMES = {"time", "tokens_per_second", "time/generate", "time/score", "time/train", "time/iteration"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("resume")
    for phase in ("first", "resume"):  # the second launch: fresh processes, state from disk only
        cmd = _torchrun("--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                        "--master-port", str(_free_port()), str(WORKER), str(out), phase)
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out, [{**torch.load(out / f"first_rank{r}.pt", weights_only=False),
                  **torch.load(out / f"resume_rank{r}.pt", weights_only=False)} for r in (0, 1)]


def _drop_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in rows]


@pytest.mark.parametrize("mode", MODES)  # DDP, FSDP2, FSDP2 with LoRA and a value head
def test_resumed_run_equals_uninterrupted(runs, mode):
    _, ranks = runs
    for res in ranks:
        a, b = res[f"{mode}_resumed"], res[f"{mode}_uninterrupted"]
        assert [row["iteration"] for row in a["history"]] == list(range(1, ITERATIONS + 1))
        for part in ("policy", "value"):
            assert a[part].keys() == b[part].keys() and a[part]
            for name, w in b[part].items():
                assert torch.equal(a[part][name], w), (mode, part, name)
        assert _drop_times(a["history"]) == _drop_times(b["history"])
        assert a["evals"] == b["evals"] and [e["iteration"] for e in a["evals"]] == [0, 2, 3]
        # β moved (adaptive), and the LR warm-up (3 iterations) continued where it stopped
        assert a["history"][-1]["objective/kl_coef"] != a["history"][0]["objective/kl_coef"]
        lrs = [row["optim/learning_rate"] for row in a["history"]]
        assert lrs == pytest.approx([1e-4 / 3, 2e-4 / 3, 1e-4], rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_every_rank_saves_its_own_random_streams(runs, mode):
    out, _ = runs
    ckpt = out / mode / CHECKPOINT_DIR
    states = [torch.load(ckpt / f"rng_rank{r}.pt", weights_only=True) for r in (0, 1)]
    order, sampler = zip(*(s["generators"] for s in states))
    assert torch.equal(order[0], order[1])  # prompts and minibatches: one order for all ranks
    assert not torch.equal(sampler[0], sampler[1])  # tokens: each rank its own stream
    assert (ckpt / "dcp").is_dir() == (mode != "ddp")
    assert (ckpt / "policy" / "model.safetensors").is_file() == (mode == "ddp")
    assert not ckpt.with_name(ckpt.name + ".tmp").exists()


def test_resume_with_another_number_of_processes_names_world_size(runs):
    out, _ = runs
    with pytest.raises(ValueError, match=r"^world_size: .* 2 process.*--nproc-per-node 2"):
        train(config("ddp", out / "ddp", checkpoint_every=STOP, resume=True))
