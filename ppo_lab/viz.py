"""Figures and widgets that work both in a live Jupyter kernel and in the static HTML book.

The rendered book has no kernel, so an ``interact`` callback never runs there. The pattern used
here needs no Python after rendering: every figure is drawn once, up front, for a grid of
parameter values; the PNGs go into a ``widgets.Stack`` and the slider's index is linked to the
stack's ``selected_index`` in the browser (``widgets.jslink``). Moving the slider switches the
figure in Jupyter, in Colab and in the offline HTML page alike.

ipywidgets 7.x (which Colab has shipped) has no ``widgets.Stack``: there the slider is live
instead — a Python callback puts the selected PNG into an ``ipywidgets.Output`` — which needs
a kernel, as Colab and Jupyter have.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["figure_slider", "FigureSlider", "figure_to_png"]


def figure_to_png(fig: Any, dpi: int = 100) -> bytes:
    """Render a matplotlib ``Figure`` to PNG bytes and close it (so it is not shown twice)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # Fixed metadata keeps the bytes identical from run to run (no software/version stamp).
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


class FigureSlider:
    """A slider that switches between precomputed figures; see :func:`figure_slider`.

    Attributes:
        slider: the ``ipywidgets.SelectionSlider`` (its ``index`` selects the figure).
        stack: the ``ipywidgets.Stack`` of ``ipywidgets.Image`` children, one per value; on
            ipywidgets 7 (no ``Stack``) the ``ipywidgets.Output`` showing the selected figure.
        pngs: the precomputed figures (PNG bytes), in slider order.
        widget: the ``VBox`` holding both, which is what gets displayed.
        values: the parameter values, in slider order.
    """

    def __init__(self, slider: Any, stack: Any, widget: Any, values: Sequence[Any], description: str,
                 pngs: Sequence[bytes] = ()):
        self.slider = slider
        self.pngs = list(pngs)
        self.stack = stack
        self.widget = widget
        self.values = list(values)
        self.description = description

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        if hasattr(self.widget, "_repr_mimebundle_"):
            bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        else:  # ipywidgets 7 displays through _ipython_display_; this is the bundle it sends
            bundle = {"application/vnd.jupyter.widget-view+json":
                      {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id}}
        # The default text/plain repr embeds the PNG bytes; a short, stable text keeps
        # notebooks small and their text output comparable by nbval.
        bundle["text/plain"] = f"FigureSlider({self.description!r}, {len(self.values)} figures)"
        return bundle

    def __repr__(self) -> str:
        return f"FigureSlider({self.description!r}, {len(self.values)} figures)"


def figure_slider(
    draw: Callable[[Any], Any],
    values: Sequence[Any],
    *,
    description: str,
    value_format: str = "{:g}",
    initial: Any = None,
    dpi: int = 100,
) -> FigureSlider:
    """Precompute ``draw(v)`` for each ``v`` in ``values`` and show them behind one slider.

    Args:
        draw: ``draw(value) -> matplotlib.figure.Figure``. The figure is rendered to PNG and
            closed here, so ``draw`` should not call ``plt.show()``.
        values: the grid of parameter values (2 to 40 of them), in slider order.
        description: the slider's label, e.g. ``"ε"`` or ``"λ"``.
        value_format: how each value is written on the slider.
        initial: the value selected at first (default: the middle of the grid).
        dpi: resolution of the precomputed PNGs.

    Returns:
        A :class:`FigureSlider`; make it the last expression of a cell (or ``display`` it).
    """
    import ipywidgets as widgets

    values = list(values)
    if not 2 <= len(values) <= 40:
        raise ValueError(f"values: need 2 to 40 parameter values, got {len(values)}")
    labels = [value_format.format(v) for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"values: labels must be distinct after value_format, got {labels}")
    if initial is None:
        index = len(values) // 2
    elif initial in values:
        index = values.index(initial)
    else:
        raise ValueError(f"initial: {initial!r} is not one of values")

    pngs = []
    for v in values:
        fig = draw(v)
        if fig is None or not hasattr(fig, "savefig"):
            raise ValueError(f"draw: must return a matplotlib Figure, got {type(fig).__name__} for {v!r}")
        pngs.append(figure_to_png(fig, dpi=dpi))

    slider = widgets.SelectionSlider(
        options=labels,
        index=index,
        description=description,
        continuous_update=True,
        layout=widgets.Layout(width="420px"),
    )
    if hasattr(widgets, "Stack"):  # ipywidgets >= 8
        stack = widgets.Stack([widgets.Image(value=png, format="png") for png in pngs], selected_index=index)
        # Browser-side link: works without a kernel (static HTML) as well as live.
        widgets.jslink((slider, "index"), (stack, "selected_index"))
    else:  # ipywidgets 7: a live slider; the kernel puts the selected figure into an Output
        stack = widgets.Output()
        _show_png(stack, pngs[index], labels[index])

        def on_change(change: dict) -> None:
            _show_png(stack, pngs[change["new"]], labels[change["new"]])

        slider.observe(on_change, names="index")
    box = widgets.VBox([slider, stack], layout=widgets.Layout(align_items="flex-start"))
    box.add_class("ppo-figure-slider")
    return FigureSlider(slider, stack, box, values, description, pngs)


def _show_png(output: Any, png: bytes, label: str) -> None:
    """Make ``output`` (an ``ipywidgets.Output``) show one PNG: its displayed outputs are set
    directly (no kernel capture needed, so a callback can update it from any thread)."""
    import base64

    output.outputs = ({
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"<figure {label}>"},
        "metadata": {},
    },)
