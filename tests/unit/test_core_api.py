"""The core API contract (DESIGN.md): names, keyword arguments, twins, and the import rules."""

import ast
import inspect
from pathlib import Path

import pytest

import ppo_lab
import ppo_lab.core as core
from ppo_lab.core import reference

CORE_DIR = Path(core.__file__).parent

# name → argument names, in order, exactly as DESIGN.md's "Core API contract" lists them
CONTRACT = {
    "discounted_returns": ["rewards", "episode_ends", "gamma"],
    "gae_advantages": ["rewards", "values", "next_values", "terminated", "episode_ends", "gamma", "gae_lambda"],
    "clipped_surrogate_loss": ["logprobs", "old_logprobs", "advantages", "clip_eps", "mask"],
    "clipped_value_loss": ["values", "old_values", "returns", "clip_eps", "mask"],
    "kl_estimate": ["logprobs", "ref_logprobs", "kind"],
    "masked_mean": ["x", "mask", "dim"],
    "masked_var": ["x", "mask", "unbiased"],
    "masked_whiten": ["x", "mask", "shift_mean"],
    "logprobs_from_logits": ["logits", "tokens"],
    "AdaptiveKLController": ["init_kl_coef", "target", "horizon"],
    "FixedKLController": ["kl_coef"],
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_names_and_arguments(name):
    fn = getattr(ppo_lab, name)
    assert list(inspect.signature(fn).parameters) == CONTRACT[name]


def test_controllers_update_signature():
    for cls in (ppo_lab.AdaptiveKLController, ppo_lab.FixedKLController):
        assert list(inspect.signature(cls.update).parameters) == ["self", "current_kl", "n_steps"]


def test_top_level_reexports_exactly_the_core_api():
    assert ppo_lab.__all__ == core.__all__
    for name in core.__all__:
        assert getattr(ppo_lab, name) is getattr(core, name)


def test_every_fast_function_has_a_twin_with_the_same_signature():
    functions = [n for n in core.__all__ if inspect.isfunction(getattr(core, n))]
    for name in functions:
        twin = getattr(reference, name)
        assert inspect.signature(twin).parameters.keys() == inspect.signature(getattr(core, name)).parameters.keys(), name


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


@pytest.mark.parametrize("path", sorted(CORE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_core_imports_nothing_else_of_ppo_lab(path):
    for module, level in _imports(path):
        if level == 0:  # absolute: the standard library's math and torch only
            assert module.split(".")[0] in {"__future__", "math", "torch"}, f"{path.name}: {module}"
        else:  # relative: siblings inside ppo_lab.core only
            assert level == 1, f"{path.name} imports from outside ppo_lab.core"


def test_reference_imports_no_fast_module():
    for module, level in _imports(CORE_DIR / "reference.py"):
        assert level == 0 and not module.startswith("ppo_lab"), module
