"""What ``train/evaluate.py`` writes for people to read: the paper's tables in Markdown, labelled video
grids (GIF + PNG filmstrips) and the latent-action scatter plot. No model code here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from model.tokenizer import to_uint8

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


# -- videos and figures -------------------------------------------------------------------------------


def _label_band(labels: list[str], width: int, height: int = 14) -> np.ndarray:
    """A white band [height, len(labels) * width, 3] uint8 with each label written over its column."""
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (len(labels) * width, height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, label in enumerate(labels):
        draw.text((i * width + 2, 1), label[: max(1, width // 6)], fill=(0, 0, 0))
    return np.asarray(band)


def video_grid(columns: list[torch.Tensor], labels: list[str]) -> np.ndarray:
    """Columns of clips, each float [B, T, 3, H, W] in [-1, 1] -> uint8 frames [T, 14 + B*H, cols*W, 3]
    (rows are the B clips, a label band on top)."""
    frames = torch.cat([torch.cat(list(c.float().cpu()), dim=-2) for c in columns], dim=-1)  # [T, 3, BH, cW]
    frames = to_uint8(frames).numpy()  # [T, BH, cW, 3]
    band = _label_band(labels, columns[0].shape[-1])
    return np.stack([np.concatenate([band, f], axis=0) for f in frames])


def write_gif(frames: np.ndarray, path: Path, fps: float = 4.0) -> Path:
    """uint8 [T, H, W, 3] -> an endlessly looping GIF."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def filmstrip(rows: list[torch.Tensor], labels: list[str], path: Path) -> Path:
    """Rows of one clip each, float [T, 3, H, W] in [-1, 1] -> a PNG with time running left to right and
    each row's label on its left (the layout of the paper's Fig. 6)."""
    from PIL import Image, ImageDraw

    strips = [to_uint8(torch.cat(list(r.float().cpu()), dim=-1)).numpy() for r in rows]  # [H, T*W, 3]
    h, w = strips[0].shape[:2]
    margin = 120
    canvas = Image.new("RGB", (margin + w, h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (strip, label) in enumerate(zip(strips, labels, strict=True)):
        canvas.paste(Image.fromarray(strip), (margin, i * h))
        draw.text((4, i * h + h // 2 - 6), label[:20], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def embed_2d(points: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """[P, A] -> ([P, 2], method): UMAP when ``umap-learn`` is installed, else PCA."""
    try:
        import umap  # optional: pulls numba; its first fit JIT-compiles for tens of seconds
    except ImportError:
        centred = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T, "PCA"
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(points), "UMAP"


def latent_scatter(
    points: np.ndarray, actions: np.ndarray, action_names: list[str], title: str, path: Path, seed: int = 0
) -> Path:
    """Latent actions [P, A] in 2D coloured by their ground-truth action ids [P] (paper Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy, method = embed_2d(points.astype(np.float64), seed)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
    for a in np.unique(actions):
        mask = actions == a
        name = action_names[a] if a < len(action_names) else str(a)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=4, alpha=0.6, label=name)
    ax.set_title(f"{title} ({method})", fontsize=9)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def assignment_table(assignment: dict[str, dict]) -> str:
    """Markdown: per slot model, how consistently a slot holds each agent (train/assignment.py)."""
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


def assignment_figure(owners: torch.Tensor, sharing: list[list[float]], title: str, path: Path) -> Path:
    """Slot-agent assignment (paper Figs. 7-9): for a few clips, the slot owning each agent in every frame
    (rows = agents, columns = frames, colour = slot), and how often two agents share a slot.
    owners int [C, T, M]; sharing [M][M]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips, _, agents = owners.shape
    fig, axes = plt.subplots(1, clips + 1, figsize=(2.4 * (clips + 1), 2.4), dpi=120)
    slots = int(owners.max()) + 1
    for c in range(clips):
        ax = axes[c]
        ax.imshow(owners[c].T.numpy(), cmap="tab10", vmin=0, vmax=9, aspect="auto", interpolation="nearest")
        ax.set_title(f"clip {c}: owner slot", fontsize=8)
        ax.set_xlabel("frame", fontsize=7)
        ax.set_yticks(range(agents), [f"agent {j}" for j in range(agents)], fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
    ax = axes[-1]
    ax.imshow(np.asarray(sharing), cmap="viridis", vmin=0, vmax=1)
    for i in range(agents):
        for j in range(agents):
            ax.text(j, i, f"{sharing[i][j]:.2f}", ha="center", va="center", fontsize=6, color="white")
    ax.set_title("share of frames in one slot", fontsize=8)
    ax.set_xticks(range(agents))
    ax.set_yticks(range(agents))
    fig.suptitle(f"{title} ({slots} slots seen, colours = slot index)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
