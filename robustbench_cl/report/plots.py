"""Plots for the HTML report, as inline SVG strings from matplotlib (no file, no URL).

Every function takes the ``results.json`` dict (or a part of it) and returns SVG markup that is
safe to inline: the XML prologue, DOCTYPE and RDF metadata (which carry URLs) are stripped, and
each figure gets its own id salt so that two figures never share an element id.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from itertools import count
from typing import Any

_salt = count()

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _figure(width: float = 5.0, height: float = 3.4):  # noqa: ANN202 - a matplotlib pair
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


def _log_axes(ax: Any) -> None:
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


def security_curves(results: dict[str, Any]) -> list[tuple[str, str]]:
    """Worst-case robust accuracy vs eps, one figure per norm, one line per (model, defense).

    eps = 0 is the clean accuracy. Only norms with at least two eps values get a figure.
    The worst case at an eps is over the attacks that ran at that eps, so the caption says so.
    """
    curves: dict[tuple[str, bool, str], dict[str, list[tuple[float, float, float, float]]]] = (
        defaultdict(lambda: defaultdict(list))
    )
    clean = {pair["label"]: pair for pair in results["pairs"]}
    for pair in results["pairs"]:
        for worst in pair["worst_case"]:
            threat = worst["threat"]
            low, high = worst["ci95"]
            key = (threat["norm"], threat["targeted"], threat.get("access", "white-box"))
            curves[key][pair["label"]].append((threat["eps"], worst["robust_accuracy"], low, high))
    figures = []
    for (norm, targeted, access), lines in curves.items():
        if max(len({p[0] for p in points}) for points in lines.values()) < 2:
            continue
        fig, ax = _figure()
        for color, (label, points) in zip(COLORS * 4, lines.items()):
            base = clean[label]
            points = sorted(
                [(0.0, base["clean_accuracy"], *base["clean_ci95"]), *points], key=lambda p: p[0]
            )
            eps = [p[0] for p in points]
            ax.plot(eps, [100 * p[1] for p in points], marker="o", color=color, label=label)
            ax.fill_between(
                eps,
                [100 * p[2] for p in points],
                [100 * p[3] for p in points],
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        suffix = (", targeted" if targeted else "") + (
            f", {access}" if access != "white-box" else ""
        )
        ax.set_xlabel(f"eps ({norm}{suffix})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        title = norm + suffix.replace(",", "")
        figures.append((title, to_svg(fig)))
    return figures


def screen_tradeoff(rows: list[dict[str, Any]], router: str) -> str | None:
    """PLR against TSR for one router: one series per protector, its eps sweep as a line;
    the top-left corner (little leakage, the task still done) is better."""
    points = [r for r in rows if r["router"] == router and r["plr"]["rate"] is not None]
    if not points:
        return None
    fig, ax = _figure(4.8, 3.4)
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in points:
        series[row["name"]].append(row)
    for color, (name, members) in zip(COLORS * 4, series.items()):
        members.sort(key=lambda r: r["eps"] or 0)
        xs = [100 * r["tsr"]["rate"] for r in members]
        ys = [100 * r["plr"]["rate"] for r in members]
        ax.plot(xs, ys, marker="o", color=color, label=name, linewidth=1 if len(xs) > 1 else 0)
        for x, y, r in zip(xs, ys, members):
            if r["eps"] is not None:
                ax.annotate(
                    f"{r['eps'] * 255:g}",
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color=color,
                )
    ax.set_xlabel("task success rate, TSR (%)")
    ax.set_ylabel("PII leakage rate, PLR (%)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return to_svg(fig)


def membership_roc(curves: list[dict[str, Any]]) -> str | None:
    """Membership-inference ROC on log-log axes, where the low-FPR regime is visible."""
    if not curves:
        return None
    fig, ax = _figure(4.5, 3.6)
    floor = 1e-4
    for color, curve in zip(COLORS * 4, curves):
        fpr = [max(v, floor) for v in curve["fpr"]]
        tpr = [max(v, floor) for v in curve["tpr"]]
        ax.plot(fpr, tpr, color=color, label=f"{curve['label']} (AUC {curve['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], color="#888", linestyle="--", linewidth=0.8, label="chance")
    _log_axes(ax)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, frameon=False)
    return to_svg(fig)


def training_traces(traces: list[tuple[str, dict[str, Any]]]) -> str:
    """DAT's stage-2 training AUC (every 10th batch) and curriculum T, one line per defense."""
    fig, ax = _figure(5.5, 3.2)
    twin = ax.twinx()
    for color, (label, training) in zip(COLORS * 4, traces):
        auc = training.get("auc_trace", [])
        steps = training.get("gen_steps_trace", [])
        ax.plot([10 * i for i in range(len(auc))], auc, color=color, label=f"{label} AUC")
        twin.plot(
            [10 * i for i in range(len(steps))], steps, color=color, linestyle=":", linewidth=1
        )
    ax.set_xlabel("stage-2 batch")
    ax.set_ylabel("training AUC, s(real) vs s(generated)")
    twin.set_ylabel("generation steps T (dotted)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return to_svg(fig)
