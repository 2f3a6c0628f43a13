"""What ``train/evaluate.py`` writes for people and programs to read: ``scores.json`` (schema
``SCORES_SCHEMA``), the paper's Table 1 (``table1.md``) and Table 2 (``table2_dci.md``) in Markdown, with
the notes a reader needs (the Copy floor, skipped metrics, missing data). No model code here.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np

# Display names, in the paper's column order (Table 1), then the ablations (Table 6).
DISPLAY = {
    "flam": "FLAM",
    "adaworld": "AdaWorld",
    "genie": "Genie",
    "world_model": "World Model",
    "playslot": "PlaySlot",
    "slotformer": "SlotFormer",
    "flam_no_temporal": "FLAM w/o temporal attn",
    "flam_global": "Global-Coupled FLAM",
}
# (key in the scores, row label, format, higher is better)
METRICS = (
    ("psnr", "PSNR (↑)", "{:.2f}", True),
    ("ssim", "SSIM (↑)", "{:.3f}", True),
    ("lpips", "LPIPS (↓)", "{:.4f}", False),
    ("st_lpips", "ST-LPIPS (↓)", "{:.4f}", False),
    ("fvd", "FVD (↓)", "{:.1f}", False),
)


def column_order(labels: list[str]) -> list[str]:
    """Paper order first (by model name), anything else after, as given."""
    rank = {name: i for i, name in enumerate(DISPLAY.values())}
    return sorted(labels, key=lambda label: rank.get(label, len(rank)))


def _cell(value: float | None, fmt: str, best: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "N/A"
    text = fmt.format(value)
    return f"**{text}**" if best else text


def table1(results: dict[str, dict]) -> str:
    """Markdown in the layout of the paper's Table 1: a block of metric rows per dataset (an Average block
    first when there are several), one column per model, Recon last; the best model value in bold.

    ``results[dataset]["rows"][label][metric]`` -> float or None; the label "Recon" is the ceiling."""
    rows = {lab for r in results.values() for lab in r["rows"]} - {"Recon", "Copy"}  # Copy: a note below
    labels = column_order(sorted(rows))
    header = ["Dataset", "Metric", *labels, "Recon"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blocks = list(results.items())
    if len(results) > 1:
        blocks.insert(0, ("Average", {"rows": _average_rows(results, [*labels, "Recon"])}))
    for dataset, result in blocks:
        rows = result["rows"]
        for i, (key, name, fmt, higher) in enumerate(METRICS):
            values = {lab: rows.get(lab, {}).get(key) for lab in [*labels, "Recon"]}
            present = [v for lab, v in values.items() if lab != "Recon" and v is not None]
            if not present and values["Recon"] is None:
                continue  # a metric skipped everywhere (e.g. LPIPS without a backbone)
            # bold the best, unless every model ties (e.g. a collapsed tokenizer makes all rows equal)
            best = (max if higher else min)(present) if len(set(present)) > 1 else None
            cells = [_cell(values[lab], fmt, values[lab] == best and lab != "Recon") for lab in header[2:]]
            lines.append(f"| {dataset if i == 0 else ''} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _average_rows(results: dict[str, dict], labels: list[str]) -> dict[str, dict[str, float | None]]:
    """Mean over datasets; None (N/A) where a model lacks a dataset (World Model on nuPlan)."""
    out: dict[str, dict[str, float | None]] = {}
    for lab in labels:
        out[lab] = {}
        for key, *_ in METRICS:
            vals = [r["rows"].get(lab, {}).get(key) for r in results.values()]
            out[lab][key] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


def table2_dci(dci: dict[str, dict[str, float]]) -> str:
    """Markdown in the layout of the paper's Table 2: D, C, I rows, one column per model, Random last."""
    labels = column_order([lab for lab in dci if lab != "Random"]) + (["Random"] if "Random" in dci else [])
    lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for key, name in (("disentanglement", "D (↑)"), ("completeness", "C (↑)"), ("informativeness", "I (↑)")):
        lines.append(f"| {name} | " + " | ".join(f"{dci[lab][key]:.2f}" for lab in labels) + " |")
    return "\n".join(lines)


def assignment_table(assignment: dict[str, dict]) -> str:
    """Markdown: per slot model, how consistently a slot holds each agent (train/eval/assignment.py)."""
    lines = [
        "| Slot-agent assignment | consistency (↑) | owners per frame | agents 0-1 share | other pairs |",
        "|---|---|---|---|---|",
    ]
    for label in column_order(list(assignment)):
        a = assignment[label]
        m = len(a["consistency"])
        others = [a["sharing"][i][j] for i in range(m) for j in range(i + 1, m) if (i, j) != (0, 1)]
        lines.append(
            f"| {label} | {sum(a['consistency']) / m:.2f} | {a['distinct']:.2f} of {m} | "
            f"{a['sharing'][0][1]:.2f} | {max(others, default=0.0):.2f} (max) |"
        )
    return "\n".join(lines)


SCORES_SCHEMA = 1  # scores.json layout version (docs/results.md, "scores.json"); bump on any change


def git_commit() -> str | None:
    """The commit of this checkout (None outside a git checkout), recorded with every score."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True
        )
    except OSError:
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def write_reports(results: dict[str, dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = {
        "schema_version": SCORES_SCHEMA,
        "commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "datasets": results,
    }
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=1))
    lines = ["# World model accuracy (paper Table 1 layout)", "", table1(results), ""]
    for name, r in results.items():
        lines.append(
            f"- **{name}**: {r['windows']} {r['split']} windows, {r['context_frames']} context frame(s) + "
            f"{r['rollout_steps']}-step autoregressive rollouts scored against real frames; Recon = the "
            f"tokenizer's reconstruction of the same frames; video: `{r['video']}`."
        )
        copy, recon = r["rows"].get("Copy", {}), r["rows"].get("Recon", {})
        if copy:
            lines.append(
                f"  Floor (Copy: the decoded last context frame held): PSNR {copy['psnr']:.2f}, "
                f"SSIM {copy['ssim']:.3f}."
            )
        if copy and recon and recon["psnr"] <= copy["psnr"]:
            lines.append(
                "  **Warning:** the tokenizer's reconstruction (Recon) is no better than holding the last "
                "frame: the tokenizer has not learned this data, so differences between models mean "
                "nothing. Train it longer (tokenizer_train.steps) and check its image grids."
            )
        for metric, why in r["skipped"].items():
            lines.append(f"  {metric.upper()} skipped: {why}.")
        for shard, m in sorted(r.get("missing", {}).items()):
            gave = f"{m['got']}/{m['expected']}"
            lines.append(f"  **Missing data** (eval.allow_partial): {shard} gave {gave}: {m['problem']}.")
        has_fvd = any("fvd" in row for row in r["rows"].values())
        if has_fvd and r["windows"] < 256:
            lines.append(
                f"  FVD from {r['windows']} videos per row: biased upward; compare only at equal counts."
            )
    (out_dir / "table1.md").write_text("\n".join(lines) + "\n")
    dci = {name: r["dci"] for name, r in results.items() if r["dci"]}
    if dci:
        text = ["# Slot representation: DCI against agent positions (paper Table 2 layout)", ""]
        for name, table in dci.items():
            frames = next(iter(table.values()))
            text += [
                f"## {name}",
                "",
                table2_dci(table),
                "",
                f"Probe trained on {frames['num_train_frames']} frames, scored on "
                f"{frames['num_val_frames']}; Random (Gaussian slots) is the probe's floor at this size "
                "(its penalty is chosen by held-out likelihood, so it stays near 0).",
                "",
            ]
            assignment = results[name].get("assignment", {})
            if assignment:
                text += [assignment_table(assignment), ""]
        (out_dir / "table2_dci.md").write_text("\n".join(text))
    print((out_dir / "table1.md").read_text())
