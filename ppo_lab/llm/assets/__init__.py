"""The committed tiny models the chapters start from, shipped as package data.

``tiny/tokenizer``, ``tiny/sft`` and ``tiny/reward`` are written by::

    ppo-lab rlhf sft tiny --out-dir ppo_lab/llm/assets/tiny
    ppo-lab rlhf rm tiny --model ppo_lab/llm/assets/tiny/sft --out-dir ppo_lab/llm/assets/tiny

(a slow test re-runs both and compares every tensor and the tokenizer files bit for bit). Each
directory loads with ``AutoTokenizer`` / ``AutoModelForCausalLM`` /
``AutoModelForSequenceClassification.from_pretrained(tiny_path(name))``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TINY_NAMES", "tiny_path"]

TINY_NAMES = ("tokenizer", "sft", "reward")
_ROOT = Path(__file__).resolve().parent / "tiny"


def tiny_path(name: str) -> Path:
    """The directory of the committed tiny ``"tokenizer"``, ``"sft"`` policy or ``"reward"``
    model. Another name, or a directory missing from the installation, is a ``ValueError``."""
    if name not in TINY_NAMES:
        raise ValueError(f"name: expected one of {TINY_NAMES}, got {name!r}")
    path = _ROOT / name
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"name: {path} is missing from this installation (package data)")
    return path
