"""The model's input transforms, the same in training and at inference: the backbone's input and GIST's.

Letters: S model input size, G GIST input side (32).

A query image and a reference image go through the same two transforms: `model_input` (the whole image
resized to S × S) and `gist_input` (the ISC2021 baseline's 32 × 32 centre crop). A trained model carries its
own S (`TrainedModels.input_size`, the test size when the config sets one): callers never pass a bare size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

GIST_SIZE = 32  # GIST input side of the ISC2021 baseline (`gist_input`)


def gist_input(img: Image.Image, size: int = GIST_SIZE) -> torch.Tensor:
    """PIL image -> (3, size, size) float32 in 0..255: bilinear resize (short side = size), centre crop.

    Long side int(size · long / short) and crop offset round((side − size) / 2), as torchvision's
    Resize(size) + CenterCrop(size) on a PIL image, which is how the ISC2021 GIST inputs were made.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)  # (3, S, S)


def model_input(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the whole image to size × size (no crop: edits near borders stay visible) → (3, S, S) in [0, 1]."""
    array = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div_(255.0)


def image_pair(img: Image.Image, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input (3, S, S) in [0, 1], GIST input (3, 32, 32) in 0..255) of one image."""
    return model_input(img, size), gist_input(img)
