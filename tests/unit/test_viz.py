"""ppo_lab.viz.figure_slider: the static Stack + jslink on ipywidgets 8, a live slider + Output on
ipywidgets 7 (Colab), checked in-process and in a real ipywidgets 7.7.1 environment."""

from __future__ import annotations

import base64
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

# Runs under any ipywidgets: draws three figures, moves the slider, prints what it sees.
SCRIPT = textwrap.dedent('''
    import base64, json, sys
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import ipywidgets
    from ppo_lab.viz import figure_slider

    def draw(k):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [0, k])
        return fig

    fs = figure_slider(draw, [1, 2, 3], description="k")
    def shown():
        if hasattr(fs.stack, "selected_index"):
            return fs.stack.children[fs.stack.selected_index].value
        return base64.b64decode(fs.stack.outputs[0]["data"]["image/png"])
    first = shown() == fs.pngs[1]
    fs.slider.index = 2  # what moving the slider does on the kernel side
    # (on ipywidgets 8 the jslink moves the Stack in the browser; mirror it here)
    if hasattr(fs.stack, "selected_index"):
        fs.stack.selected_index = fs.slider.index
    print(json.dumps({"version": ipywidgets.__version__, "kind": type(fs.stack).__name__,
                      "first": first, "after": shown() == fs.pngs[2], "distinct": len(set(fs.pngs)) == 3,
                      "repr": repr(fs), "mime": sorted(fs._repr_mimebundle_())}))
''')


def _draw(k):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, k])
    return fig


def test_stack_and_jslink_on_ipywidgets_8():
    import ipywidgets as widgets

    fs = figure_slider_or_skip(widgets)
    assert isinstance(fs.stack, widgets.Stack) and len(fs.stack.children) == 3
    assert fs.stack.selected_index == fs.slider.index == 1
    assert [c.value for c in fs.stack.children] == fs.pngs and len(set(fs.pngs)) == 3


def figure_slider_or_skip(widgets):
    if not hasattr(widgets, "Stack"):
        pytest.skip("ipywidgets < 8 in this environment")
    from ppo_lab.viz import figure_slider

    return figure_slider(_draw, [1, 2, 3], description="k")


def test_live_fallback_without_stack(monkeypatch):
    """With ``widgets.Stack`` missing (ipywidgets 7), the slider drives an Output from Python."""
    import ipywidgets as widgets

    from ppo_lab.viz import figure_slider

    monkeypatch.delattr(widgets, "Stack", raising=False)
    fs = figure_slider(_draw, [1, 2, 3], description="k", initial=3)
    assert isinstance(fs.stack, widgets.Output)
    shown = lambda: base64.b64decode(fs.stack.outputs[0]["data"]["image/png"])  # noqa: E731
    assert shown() == fs.pngs[2]
    fs.slider.index = 0
    assert shown() == fs.pngs[0] and len(fs.stack.outputs) == 1
    assert "ppo-figure-slider" in fs.widget._dom_classes


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=[1]), "values"), (dict(values=[1.0, 1.0000001]), "values"), (dict(values=[1, 2], initial=5), "initial"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    from ppo_lab.viz import figure_slider

    with pytest.raises(ValueError, match=match):
        figure_slider(_draw, description="k", **kwargs)


@pytest.mark.slow
def test_slider_python_side_on_ipywidgets_7_7_1(tmp_path):
    """A fresh venv that sees the pinned packages through a .pth file, with ipywidgets 7.7.1
    (and its ipython_genutils) installed in front of them, as on Colab."""
    env_dir = tmp_path / "iw7"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    root = Path(__file__).resolve().parents[2]
    # the pinned packages, then the repository (for ppo_lab): after the venv's own site-packages
    Path(site, "book_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n" + str(root) + "\n")
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "ipywidgets==7.7.1", "ipython_genutils==0.2.0"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    run = subprocess.run([py, "-c", SCRIPT], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    import json

    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["version"] == "7.7.1" and facts["kind"] == "Output", facts
    assert facts["first"] and facts["after"] and facts["distinct"], facts
    assert facts["repr"] == "FigureSlider('k', 3 figures)" and "application/vnd.jupyter.widget-view+json" in facts["mime"]

