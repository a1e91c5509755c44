"""The committed benchmark results, shipped inside the package so every chapter reads them offline.

Each ``ppo_lab/results/<name>.json`` is written by ``benchmarks/<script>.py`` (through
``benchmarks/common.py``) as ``{"benchmark", "command", "created", "machine", "config",
"results": [rows], "summary"?}``: a measurement stamped with the command and machine that made it.
The chapters plot these files with :func:`load_result`; a pip install of ``ppo-lab`` (as the
Colab cell does) carries them as package data, so no chapter fetches anything after the install.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent


def result_names() -> list[str]:
    """Names of the committed result files (``<name>.json`` without the suffix), sorted."""
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load_result(name: str) -> dict:
    """The committed result ``<name>.json`` as a dict (e.g. ``load_result("pendulum")``).

    Unknown ``name`` -> ValueError listing the names there are.
    """
    if not isinstance(name, str) or not name or "/" in name or name.endswith(".json"):
        raise ValueError(f"name must be a result name such as 'cartpole', got {name!r}")
    resource = resources.files(__name__) / f"{name}.json"
    if not resource.is_file():
        raise ValueError(f"name: no result {name!r}; there are {result_names()}")
    return json.loads(resource.read_text(encoding="utf-8"))
