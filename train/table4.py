"""The paper's Table 4 (returns of behaviour cloning on unseen levels, dataset x label budget) as Markdown
and JSON, the labellers' accuracy next to it, and the return-against-label-budget plot. No model code.

``results`` (what ``scores.json`` holds), per dataset:
    {"budgets": {budget: {method: summary}}, "random": summary, "expert": summary,
     "label_accuracy": {budget: {method: accuracy}}, ...}
where a summary is ``train.policy_eval.summarise``'s dict (mean, se, episodes, seeds, ...) and methods
are world model names, "idm" and "vanilla_bc".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Column order: the latent action models first (as the paper's FLAM column), then the baselines.
DISPLAY = {
    "flam": "FLAM",
    "genie": "Genie",
    "adaworld": "AdaWorld",
    "playslot": "PlaySlot",
    "idm": "supervised IDM",
    "vanilla_bc": "vanilla BC",
}
PAPER = (
    "Paper (Table 4, 1k / 10k labels): Bigfish FLAM 1.8 / 8.8, vanilla BC 1.0 / 3.6, random 0.9; "
    "Starpilot FLAM 1.8 / 9.1, vanilla BC 1.9 / 6.4, random 1.1."
)


def budget_label(budget: int) -> str:
    """1000 -> "1k", 10000 -> "10k", 1500 -> "1.5k", 200 -> "200"."""
    if budget >= 1000 and budget % 100 == 0:
        return f"{budget / 1000:g}k"
    return str(budget)


def methods_of(results: dict[str, Any]) -> list[str]:
    seen = {m for r in results.values() for row in r["budgets"].values() for m in row}
    return sorted(seen, key=lambda m: (list(DISPLAY).index(m) if m in DISPLAY else len(DISPLAY), m))


def _cell(summary: dict[str, Any] | None, best: bool = False) -> str:
    if summary is None:
        return ""
    text = f"{summary['mean']:.2f} ± {summary['se']:.2f}"
    return f"**{text}**" if best else text


def table4(results: dict[str, Any]) -> str:
    """Markdown in the layout of Table 4: one row per (dataset, budget), a column per method, then random
    and expert on each dataset's first row; mean ± standard error; the best method of a row in bold."""
    methods = methods_of(results)
    header = ["Dataset", *(DISPLAY.get(m, m) for m in methods), "random", "expert"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset, r in results.items():
        for i, (budget, row) in enumerate(sorted(r["budgets"].items(), key=lambda kv: int(kv[0]))):
            means = [row[m]["mean"] for m in methods if m in row]
            best = max(means) if len(set(means)) > 1 else None
            cells = [_cell(row.get(m), row.get(m, {}).get("mean") == best) for m in methods]
            ref = [_cell(r.get("random")), _cell(r.get("expert"))] if i == 0 else ["", ""]
            label = f"{dataset.capitalize()} ({budget_label(int(budget))})"
            lines.append("| " + " | ".join([label, *cells, *ref]) + " |")
    return "\n".join(lines)


def accuracy_table(results: dict[str, Any]) -> str:
    """How often each labeller's pseudo-label is the true action, on held-out (val) demo frames."""
    labellers = [m for m in methods_of(results) if m != "vanilla_bc"]
    header = ["Dataset", *(DISPLAY.get(m, m) for m in labellers)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset, r in results.items():
        for budget, row in sorted(r.get("label_accuracy", {}).items(), key=lambda kv: int(kv[0])):
            cells = [f"{row[m]:.3f}" if m in row else "" for m in labellers]
            lines.append(
                f"| {dataset.capitalize()} ({budget_label(int(budget))}) | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def plot_budgets(results: dict[str, Any], path: Path) -> Path:
    """Return (mean ± s.e.) against label budget (log scale), one line per method, random and expert as
    horizontal bands; one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (dataset, r) in zip(axes[0], results.items(), strict=True):
        budgets = sorted(int(b) for b in r["budgets"])
        for method in methods_of({dataset: r}):
            points = [(b, r["budgets"][str(b)][method]) for b in budgets if method in r["budgets"][str(b)]]
            ax.errorbar(
                [b for b, _ in points],
                [s["mean"] for _, s in points],
                yerr=[s["se"] for _, s in points],
                marker="o",
                capsize=3,
                label=DISPLAY.get(method, method),
            )
        for name, style in (("random", ":"), ("expert", "--")):
            if name in r:
                ax.axhline(r[name]["mean"], color="gray", linestyle=style, label=name)
        ax.set_xscale("log")
        ax.minorticks_off()  # label only the budgets that were run
        ax.set_xticks(budgets, [budget_label(b) for b in budgets])
        ax.set_xlabel("labelled frames")
        ax.set_ylabel("return on unseen levels")
        ax.set_title(dataset)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path, notes: list[str] | None = None) -> Path:
    """scores.json, table4.md (Table 4, the labellers' accuracy, notes) and return_vs_labels.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scores.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    plot = plot_budgets(results, out_dir / "return_vs_labels.png")
    text = [
        "# Table 4: behaviour cloning from latent actions (return on unseen levels, mean ± s.e.)",
        "",
        table4(results),
        "",
        PAPER,
        "",
        "## Labeller accuracy (pseudo-label = true action, held-out demo frames)",
        "",
        accuracy_table(results),
        "",
        f"Plot: {plot.name}.",
        *(["", *notes] if notes else []),
    ]
    (out_dir / "table4.md").write_text("\n".join(text) + "\n")
    return out_dir / "table4.md"
