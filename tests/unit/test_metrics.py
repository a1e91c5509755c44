"""ppo_lab.metrics: one definition per log key; healthy ranges; the core loss stats map onto keys."""

import math
import re

import pytest
import torch

from ppo_lab import metrics, ppo_loss


def test_keys_are_unique_and_well_formed():
    keys = [m.key for m in metrics._ALL]
    assert len(keys) == len(set(keys)) == len(metrics.METRICS)
    for m in metrics._ALL:
        assert re.fullmatch(r"[a-z]+/[a-z_]+", m.key), m.key
        assert m.description and m.name_zh
        if m.low is not None and m.high is not None:
            assert m.low < m.high
        if m.has_range:
            assert m.outside, f"{m.key}: say what leaving the range means"


def test_design_names_the_keys_it_requires():
    for key in ("policy/clip_fraction", "policy/approx_kl", "objective/kl", "objective/rlhf_reward",
                "value/explained_variance"):
        assert key in metrics.METRICS


def test_every_ppo_loss_stat_has_a_log_key():
    x = torch.zeros(4, 2)
    _, stats = ppo_loss(logprobs=x, old_logprobs=x, advantages=x, values=x, old_values=x, returns=x,
                        entropy=x, clip_eps=0.2, vf_clip_eps=0.2, vf_coef=0.5)
    logged = metrics.loss_metrics(stats)
    assert len(logged) == len(stats)
    metrics.check_keys(logged)
    with pytest.raises(KeyError, match="mystery"):
        metrics.loss_metrics({"mystery": 1.0})


def test_check_keys_and_unhealthy():
    with pytest.raises(KeyError, match="policy/clipfrac"):
        metrics.check_keys({"policy/clipfrac": 0.1})
    record = {"policy/clip_fraction": 0.5, "policy/approx_kl": 0.01, "value/explained_variance": math.nan,
              "policy/entropy": 0.0}
    bad = metrics.unhealthy(record)
    assert bad.keys() == {"policy/clip_fraction", "value/explained_variance"}
    assert "learning rate" in bad["policy/clip_fraction"]
    assert metrics.METRICS["policy/entropy"].is_healthy(0.0) is None  # task-dependent: no verdict
    # a whole trainer row: bookkeeping columns and None (nothing measured) are skipped, not judged
    row = {**record, "update": 3, "global_step": 1536, "time": 0.4, "sps": 9000.0, "clip_eps": None,
           "epochs": 4, "env/episodic_return": None}
    assert metrics.unhealthy(row) == bad
    with pytest.raises(KeyError, match="steps"):
        metrics.unhealthy({**row, "steps": 10})
    assert metrics.METRICS["objective/kl"].is_healthy(-0.1) is False
    assert metrics.METRICS["objective/kl"].is_healthy(1e6) is True  # open upper bound


def test_markdown_table_has_a_row_per_metric():
    table = metrics.markdown_table().splitlines()
    assert len(table) == 2 + len(metrics.METRICS)
    assert any("`policy/clip_fraction`" in row and "[0, 0.3]" in row for row in table)
    assert any("`objective/kl`" in row and "[0, ∞]" in row for row in table)


def test_running_mean_and_first_reach_by_hand():
    from ppo_lab.metrics import first_reach, running_mean

    assert running_mean([1, 2, 3, 4], window=2) == [1.0, 1.5, 2.5, 3.5]
    episodes = [{"return": r, "global_step": 10 * (i + 1)} for i, r in enumerate([0, 4, 4, 2, 6])]
    # window 2 means: 2, 4, 3, 4 -> first >= 4 at the third episode
    assert first_reach(episodes, threshold=4, window=2)["global_step"] == 30
    assert first_reach(episodes, threshold=5, window=2) is None
    assert first_reach(episodes[:1], threshold=0, window=2) is None  # fewer than `window` episodes
