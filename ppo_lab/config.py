"""Config base shared by every trainer, and the one function that derives batch sizes.

Each experiment has one typed config dataclass (STYLE.md, principle 6). Its field docstrings are
the ``--help`` text of the CLI (tyro reads them), and it validates itself on construction: a bad
value raises ``ValueError`` whose message starts with the field's name, so a reader who passes
``--num-minibatches 3`` learns which flag to change before any environment is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchSizes", "ConfigBase", "check_field", "derive_batch_sizes"]


def check_field(condition: bool, field: str, message: str) -> None:
    """Raise ``ValueError("<field>: <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{field}: {message}")


@dataclass
class ConfigBase:
    """Base of the typed experiment configs: validation on construction, ``replace``, ``to_dict``.

    Subclasses override :meth:`validate` (calling ``super().validate()``) and use the helpers below,
    which all raise ``ValueError`` naming the field.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the first bad one."""

    # --- helpers for validate() ------------------------------------------------------------
    def _positive_int(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            check_field(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                name,
                f"must be a positive integer, got {value!r}",
            )

    def _non_negative_int(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            check_field(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                name,
                f"must be an integer >= 0, got {value!r}",
            )

    def _number(self, name: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, optional: bool = False) -> None:
        """``name`` is a finite number in [low, high] (``(low, high]`` with ``low_open``)."""
        value = getattr(self, name)
        if value is None and optional:
            return
        check_field(
            isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value),
            name,
            f"must be a finite number, got {value!r}",
        )
        if low is not None:
            ok = value > low if low_open else value >= low
            check_field(ok, name, f"must be {'>' if low_open else '>='} {low}, got {value}")
        if high is not None:
            check_field(value <= high, name, f"must be <= {high}, got {value}")

    def replace(self, **changes: Any):
        """A validated copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields (tuples become lists), fit for JSON and checkpoints."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }


@dataclass(frozen=True)
class BatchSizes:
    """Sizes derived from a config by :func:`derive_batch_sizes`."""

    batch_size: int
    """Transitions per rollout: ``num_envs * num_steps``."""
    minibatch_size: int
    """Transitions per gradient step: ``batch_size // num_minibatches``."""
    num_updates: int
    """Rollout-and-optimise iterations: ``total_timesteps // batch_size`` (0 if not given)."""


def derive_batch_sizes(
    *, num_envs: int, num_steps: int, num_minibatches: int, total_timesteps: int | None = None
) -> BatchSizes:
    """The one place batch sizes are derived (STYLE.md, principle 6).

    ``batch_size = num_envs * num_steps``; ``minibatch_size = batch_size // num_minibatches``,
    which must divide exactly (otherwise some transitions would silently never be trained on);
    ``num_updates = total_timesteps // batch_size``, which must be at least 1.
    Every failure is a ``ValueError`` that names the field to change.
    """
    for name, value in (("num_envs", num_envs), ("num_steps", num_steps),
                        ("num_minibatches", num_minibatches)):
        check_field(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    name, f"must be a positive integer, got {value!r}")
    batch_size = num_envs * num_steps
    check_field(
        batch_size % num_minibatches == 0,
        "num_minibatches",
        f"{num_minibatches} does not divide batch_size = num_envs * num_steps = "
        f"{num_envs} * {num_steps} = {batch_size}",
    )
    num_updates = 0
    if total_timesteps is not None:
        check_field(
            isinstance(total_timesteps, int) and total_timesteps >= batch_size,
            "total_timesteps",
            f"must be an integer >= batch_size = {batch_size}, got {total_timesteps!r}",
        )
        num_updates = total_timesteps // batch_size
    return BatchSizes(batch_size, batch_size // num_minibatches, num_updates)
