"""The plot of `cseg bench --plot`: stacked stage bars per backend and path, and the roofline beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot(summary: dict, path: str | Path) -> None:
    """Stacked bars of the median stage times, one bar per backend and path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{backend}\n{path}", data["stages_ms"]) for backend, paths in summary["backends"].items()
            for path, data in paths.items()]  # fmt: skip
    stages = sorted({s for _, stats in bars for s in stats if s not in ("total", "tokens")})
    line = summary.get("roofline")
    figure, axes = plt.subplots(1, 2 if line else 1, figsize=(2.2 * len(bars) + (8 if line else 3), 5),
                                gridspec_kw={"width_ratios": [2, 1]} if line else None, squeeze=False)  # fmt: skip
    axis = axes[0][0]
    bottom = np.zeros(len(bars))
    colors = plt.get_cmap("tab20").colors
    for index, stage in enumerate(stages):
        values = np.array([stats.get(stage, {"median": 0.0})["median"] for _, stats in bars])
        axis.bar([label for label, _ in bars], values, bottom=bottom, label=stage, color=colors[index % len(colors)])
        bottom += values
    axis.set_ylabel("median latency (ms)")
    axis.set_title("cseg bench: stage breakdown")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    if line:  # the runtime's graphs against the machine's peak, decode against its bandwidth bound
        labels = [f"{key}\n{graph['precision']}" for key, graph in line["graphs"].items()] + ["decode\n(bandwidth)"]
        values = [100 * graph["fraction_of_peak"] for graph in line["graphs"].values()]
        axes[0][1].bar(labels, values + [100 * line["decode"]["fraction_of_bound"]], color="tab:gray")
        axes[0][1].set_ylabel("% of the measured machine bound")
        axes[0][1].set_title("runtime roofline")
        axes[0][1].tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
