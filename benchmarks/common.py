"""What every benchmark script shares: the stamp (command, machine, time) and the JSON writer.

Each ``benchmarks/<name>.py`` writes ``benchmarks/results/<name>.json`` as
``{"benchmark", "command", "created", "machine", "config", "results": [rows]}`` so the book's
benchmark tables can be generated from the files alone (DESIGN.md: every committed result is
stamped with its command and machine).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

from ppo_lab.cli import doctor_report

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    """The machine a result was measured on: CPU, core count, then ``ppo-lab doctor``'s rows."""
    return {"cpu": _cpu_model(), "cpu cores": str(os.cpu_count()), **dict(doctor_report())}


def command() -> str:
    """The command line that produced this result, as a reader would type it."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def time_call(fn, *, sync=lambda: None, min_time_s: float = 0.2, max_repeats: int = 200) -> dict[str, float]:
    """Best (minimum), median and interquartile range (ms) of ``fn()`` after one warm-up call.

    The minimum is the least disturbed by other load on the machine (``timeit``'s advice); the
    median and IQR show how much that load mattered.

    Repeats until ``min_time_s`` of measurements (at least 5 calls) or ``max_repeats``. ``sync``
    (e.g. ``torch.cuda.synchronize``) runs before each clock read so GPU work is counted.
    """
    fn()
    sync()
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < 5 or sum(times) < min_time_s):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"min_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times),
            "iqr_ms": 1e3 * (q3 - q1), "repeats": len(times)}


def write(name: str, config: dict, results: list[dict], out: Path | None = None) -> Path:
    """Write the stamped result file (default ``benchmarks/results/<name>.json``); return its path."""
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": command(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": config,
        "results": results,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out)  # atomic: a reader never sees half a file
    return out
