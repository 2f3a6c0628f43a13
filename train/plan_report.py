"""What ``train/plan.py`` writes for people to read: the planning tables (Markdown), a success plot and
episode videos. No model code here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.tokenizer import to_float
from train.visuals import video_grid, write_gif


def _setting(key: str) -> str:
    variant, k = key.split("-k")
    return f"{'A, others still' if variant == 'still' else 'B, others moving'}, k={k}"


def table(scores: dict) -> str:
    """Success rate (mean +- std over seeds) per planner and setting, then distance / steps / time."""
    results = scores["results"]
    keys = list(results)
    rows = list(next(iter(results.values())))
    pc = scores["plan"]
    lines = [
        "# Planning: MultiGrid goal reaching with MPC (paper 003)",
        "",
        f"{pc['episodes']} episodes x {len(pc['seeds'])} seeds per setting; success = the controlled agent "
        "reaches the goal cell and heading within 2k steps. Search per setting: "
        + ", ".join(f"{_setting(k)}: {scores['search'][k]} H={scores['horizon'][k]}" for k in keys)
        + ".",
        "",
        "| Planner | " + " | ".join(_setting(k) for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = [f"{results[k][row]['success']:.2f} ± {results[k][row]['success_std']:.2f}" for k in keys]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final distance to the goal cell (Manhattan, cells) / steps taken / planning ms per step:",
        "",
        "| Planner | " + " | ".join(_setting(k) for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = []
        for k in keys:
            r = results[k][row]
            ms = "-" if r["ms_per_step"] is None else f"{r['ms_per_step']:.0f}"
            cells.append(f"{r['distance']:.2f} / {r['steps']:.1f} / {ms}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(scores: dict, path: Path) -> Path:
    """Grouped bars: success rate (+- std over seeds) of every planner in every setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = scores["results"]
    keys = list(results)
    rows = list(next(iter(results.values())))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(keys), 4), dpi=120)
    for i, row in enumerate(rows):
        x = np.arange(len(keys)) + i * width
        means = [results[k][row]["success"] for k in keys]
        stds = [results[k][row]["success_std"] for k in keys]
        ax.bar(x, means, width, yerr=stds, label=row, capsize=2)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [_setting(k) for k in keys], fontsize=7)
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=6, loc="upper right")
    ax.set_title("MultiGrid goal reaching", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def episode_gif(columns: dict[str, list[np.ndarray]], path: Path) -> Path:
    """columns: name -> episodes, each uint8 frames [T, H, W, 3] (the goal: [1, H, W, 3]); rows are the
    episodes, shorter ones hold their last frame."""
    length = max(len(f) for episodes in columns.values() for f in episodes)
    padded = []
    for episodes in columns.values():
        clips = [np.concatenate([f, np.repeat(f[-1:], length - len(f), 0)]) for f in episodes]
        padded.append(to_float(torch.from_numpy(np.stack(clips))))  # [B, T, 3, H, W]
    return write_gif(video_grid(padded, list(columns)), path, fps=2.0)
