"""Plots for the HTML report, as inline SVG strings from matplotlib (no file, no URL).

Every function takes the ``results.json`` dict (or a part of it) and returns SVG markup that is
safe to inline: the XML prologue, DOCTYPE and RDF metadata (which carry URLs) are stripped, and
each figure gets its own id salt so that two figures never share an element id.
"""

from __future__ import annotations

import io
import re
from itertools import count
from typing import Any

_salt = count()

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def figure(width: float = 5.0, height: float = 3.4):  # noqa: ANN202 - a matplotlib pair
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: smaller, selectable, escaped by us
            "text.parse_math": False,  # a '$' in a model name is text, not mathtext
            "svg.hashsalt": "robustbench_cl",  # element ids from content: a re-render is a no-op
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt.subplots(figsize=(width, height))


def to_svg(fig: Any) -> str:
    import matplotlib
    from matplotlib import pyplot as plt

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"rbcl{next(_salt)}"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buffer.getvalue()
    svg = re.sub(r"<\?xml[^>]*\?>\s*", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>\s*", "", svg)
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = svg.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    svg = svg.replace(' xmlns="http://www.w3.org/2000/svg"', "")
    return svg.strip()


def log_axes(ax: Any) -> None:
    """Log-log axes whose tick labels are plain numbers (``0.001``).

    matplotlib's default log formatter writes mathtext (``$\\mathdefault{10^{-3}}$``), which
    ``text.parse_math: False`` (kept so a '$' in a display name stays text) would print raw.
    """
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(base=10))
        axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
