"""Things a person looks at: TensorBoard scalars/images (rank 0 only), PNG image grids and filmstrips,
and side-by-side GIF videos (training-time validation and evaluation write the same kind)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from model.tokenizer import to_uint8


class TensorBoard:
    """A SummaryWriter on the main rank; a no-op elsewhere (and when tensorboard is missing)."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, path: str | Path, step: int) -> None:
        if self.writer is not None:
            from PIL import Image

            self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def image_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [rows * H, (N / rows) * W, 3], row-major."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return rearrange(pixels, "(r c) ch h w -> (r h) (c w) ch", r=rows).numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, rows: int) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, rows)).save(path)
    return path


def _label_band(labels: list[str], width: int, height: int = 14) -> np.ndarray:
    """A white band [height, len(labels) * width, 3] uint8 with each label written over its column."""
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (len(labels) * width, height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, label in enumerate(labels):
        draw.text((i * width + 2, 1), label[: max(1, width // 6)], fill=(0, 0, 0))
    return np.asarray(band)


def video_grid(columns: list[torch.Tensor], labels: list[str] | None = None) -> np.ndarray:
    """Columns of clips, each float [B, T, 3, H, W] in [-1, 1] -> uint8 frames [T, B*H, cols*W, 3]
    (rows are the B clips), with a band of 14 rows naming the columns on top when ``labels`` are given."""
    frames = torch.cat([torch.cat(list(c.float().cpu()), dim=-2) for c in columns], dim=-1)  # [T, 3, BH, cW]
    frames = to_uint8(frames).numpy()  # [T, BH, cW, 3]
    if labels is None:
        return frames
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
