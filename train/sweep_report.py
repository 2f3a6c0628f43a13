"""What ``train/sweep.py`` writes for people to read: the capacity table and the error-vs-capacity plot."""

from __future__ import annotations

from pathlib import Path

# Capacity grows as beta and lambda_l1 fall and as the codebook grows: plots put more capacity to the right.
GROWS_WITH_VALUE = {"kl": False, "sparse": False, "vq": True}
TITLES = {"kl": "kl (noise): beta", "sparse": "sparse: lambda_l1", "vq": "vq: codebook size"}


def table(scores: dict) -> str:
    rows = scores["rows"]
    lines = [
        f"# Capacity sweep: {scores['model']} on {scores['dataset']} ({scores['steps']} steps per run)",
        "",
        "| Family | Capacity knob | Value | one-step IDM MSE (↓) | copy MSE | rollout PSNR (↑) | D / C / I "
        "| scene cut / normal (≥ 2: honest) | cycle / direct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dci = r.get("dci")
        dci_text = (
            "-"
            if not dci
            else " / ".join(f"{dci[k]:.2f}" for k in ("disentanglement", "completeness", "informativeness"))
        )
        cut = f"{r['scene_cut_ratio']:.2f}" if "scene_cut_ratio" in r else "-"
        cycle = f"{r['cycle_ratio']:.2f}" if "cycle_ratio" in r else "-"
        lines.append(
            f"| {r['family']} | {r['knob']} | {r['value']:g} | {r['idm_mse']:.3g} | {r['copy_mse']:.3g} "
            f"| {r['rollout_psnr']:.2f} | {dci_text} | {cut} | {cycle} |"
        )
    lines += [
        "",
        f"One-step IDM MSE: teacher-forced next-frame error in FSQ-feature space with the IDM's latents on "
        f"{rows[0]['windows']} cached test windows (copy MSE: holding the frame). Rollout PSNR: the Table 1 "
        f"protocol against real test frames (Copy floor {scores['copy_psnr']:.2f}, Recon ceiling "
        f"{scores['recon_psnr']:.2f})."
        if scores.get("copy_psnr") is not None
        else "",
    ]
    return "\n".join(lines) + "\n"


def plot(scores: dict, path: Path) -> Path:
    """One column per family: one-step IDM MSE (top) and rollout PSNR (bottom) against the knob."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in scores["rows"]))
    fig, axes = plt.subplots(2, len(families), figsize=(3.2 * len(families), 5), dpi=120, squeeze=False)
    for j, family in enumerate(families):
        rows = sorted((r for r in scores["rows"] if r["family"] == family), key=lambda r: r["value"])
        x = [r["value"] for r in rows]
        for i, (key, label) in enumerate((("idm_mse", "one-step IDM MSE"), ("rollout_psnr", "rollout PSNR"))):
            ax = axes[i][j]
            ax.plot(x, [r[key] for r in rows], "o-")
            if key == "idm_mse":
                ax.axhline(rows[0]["copy_mse"], color="grey", ls="--", lw=0.8, label="copy")
                ax.legend(fontsize=7)
            elif scores.get("copy_psnr") is not None:
                ax.axhline(scores["copy_psnr"], color="grey", ls="--", lw=0.8)
            ax.set_xscale("log")
            if not GROWS_WITH_VALUE[family]:
                ax.invert_xaxis()
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][j].set_title(f"{TITLES[family]} (capacity →)", fontsize=8)
        axes[1][j].set_xlabel(TITLES[family].split(": ")[1], fontsize=8)
    fig.suptitle(f"{scores['model']} on {scores['dataset']}: error against latent capacity", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
