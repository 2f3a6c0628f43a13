"""Things a person looks at: TensorBoard scalars/images (rank 0 only) and PNG image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange


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
