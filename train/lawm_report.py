"""The return-vs-labelled-fraction table and plot of ``make lawm``. No model code.

``results`` (what ``scores.json`` holds):
    {"fractions": {fraction: {row: summary}}, "random": summary, "expert": summary, ...}
where a summary is ``train.policy_eval.summarise``'s dict and a row is "<method>" or "<method>/<world model>".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DISPLAY = {
    "iql_latent": "IQL, latent actions",
    "bc_latent": "BC, latent actions",
    "iql_real": "IQL, real actions (labelled only)",
    "bc_real": "BC, real actions (labelled only)",
}


def row_label(row: str) -> str:
    method, _, model = row.partition("/")
    return DISPLAY.get(method, method) + (f" [{model}]" if model else "")


def fraction_label(fraction: float) -> str:
    """0.001 -> "0.1%", 1.0 -> "100%"."""
    return f"{fraction * 100:g}%"


def rows_of(results: dict[str, Any]) -> list[str]:
    seen = {r for row in results["fractions"].values() for r in row}
    order = list(DISPLAY)
    return sorted(seen, key=lambda r: (order.index(r.split("/")[0]) if r.split("/")[0] in order else 99, r))


def table(results: dict[str, Any]) -> str:
    """One row per method (and world model), one column per labelled fraction; mean ± s.e.; the best row
    of each column in bold; random and expert below."""
    fractions = sorted(results["fractions"], key=float)
    lines = ["| method | " + " | ".join(fraction_label(float(f)) for f in fractions) + " |"]
    lines.append("|---|" + "---|" * len(fractions))
    best = {}
    for f in fractions:
        means = [s["mean"] for s in results["fractions"][f].values()]
        best[f] = max(means) if len(set(means)) > 1 else None
    for row in rows_of(results):
        cells = []
        for f in fractions:
            s = results["fractions"][f].get(row)
            text = "" if s is None else f"{s['mean']:.2f} ± {s['se']:.2f}"
            cells.append(f"**{text}**" if s is not None and s["mean"] == best[f] else text)
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    for name in ("random", "expert"):
        if name in results:
            s = results[name]
            lines.append(
                f"| {name} (reference) | "
                + " | ".join([f"{s['mean']:.2f} ± {s['se']:.2f}"] * len(fractions))
                + " |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Return (mean ± s.e.) against the labelled fraction, log scale, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fractions = sorted(results["fractions"], key=float)
    for row in rows_of(results):
        pts = [(float(f), results["fractions"][f][row]) for f in fractions if row in results["fractions"][f]]
        ax.errorbar(
            [f for f, _ in pts],
            [s["mean"] for _, s in pts],
            yerr=[s["se"] for _, s in pts],
            marker="o",
            capsize=3,
            label=row_label(row),
        )
    for name, style in (("random", ":"), ("expert", "--")):
        if name in results:
            ax.axhline(results[name]["mean"], color="gray", linestyle=style, label=name)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks([float(f) for f in fractions], [fraction_label(float(f)) for f in fractions])
    ax.set_xlabel("labelled fraction of training episodes")
    ax.set_ylabel("return on unseen levels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path, title: str, notes: list[str]) -> Path:
    """scores.json, return_vs_labels.md (table + notes) and return_vs_labels.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scores.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    figure = plot(results, out_dir / "return_vs_labels.png")
    text = [f"# {title}", "", table(results), "", f"Plot: {figure.name}.", "", *notes]
    out = out_dir / "return_vs_labels.md"
    out.write_text("\n".join(text) + "\n")
    return out
