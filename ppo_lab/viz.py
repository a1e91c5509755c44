"""Figures and widgets that work both in a live Jupyter kernel and in the static HTML book.

The rendered book has no kernel, so an ``interact`` callback never runs there. The pattern used
here needs no Python after rendering: every figure is drawn once, up front, for a grid of
parameter values; the PNGs go into a ``widgets.Stack`` and the slider's index is linked to the
stack's ``selected_index`` in the browser (``widgets.jslink``). Moving the slider switches the
figure in Jupyter, in Colab and in the offline HTML page alike.
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
        stack: the ``ipywidgets.Stack`` of ``ipywidgets.Image`` children, one per value.
        widget: the ``VBox`` holding both, which is what gets displayed.
        values: the parameter values, in slider order.
    """

    def __init__(self, slider: Any, stack: Any, widget: Any, values: Sequence[Any], description: str):
        self.slider = slider
        self.stack = stack
        self.widget = widget
        self.values = list(values)
        self.description = description

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude)
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

    images = []
    for v in values:
        fig = draw(v)
        if fig is None or not hasattr(fig, "savefig"):
            raise ValueError(f"draw: must return a matplotlib Figure, got {type(fig).__name__} for {v!r}")
        images.append(widgets.Image(value=figure_to_png(fig, dpi=dpi), format="png"))

    slider = widgets.SelectionSlider(
        options=labels,
        index=index,
        description=description,
        continuous_update=True,
        layout=widgets.Layout(width="420px"),
    )
    stack = widgets.Stack(images, selected_index=index)
    # Browser-side link: works without a kernel (static HTML) as well as live.
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    box = widgets.VBox([slider, stack], layout=widgets.Layout(align_items="flex-start"))
    box.add_class("ppo-figure-slider")
    return FigureSlider(slider, stack, box, values, description)
