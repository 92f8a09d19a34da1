"""GIST (Oliva & Torralba 2001) as lear_gist 1.2 computes it, in batched torch.

The ISC2021 GIST baseline resizes each image so its short side is 32 px, centre-crops 32 × 32 and runs
lear_gist with its defaults: colour, prefilter fc = 4, 3 scales with 8, 8, 4 orientations, 4 × 4 blocks,
giving 3 · 20 · 16 = 960 values. `Gist` reproduces those numbers (tests compare against lear_gist output)
and becomes part of the trained model, so it runs on any device, batched, always in float32.

Pipeline per image (H = W = S; P = S + 2·PAD the padded side):
  prefilter: x ← log(x + 1); mirror-pad PAD px; x ← x − lowpass(x); x ← x / (0.2 + √lowpass(m²)) with m the
  channel mean; unpad. lowpass multiplies the FFT by a Gaussian of width fc/√ln2 (unnormalised FFTs).
  filter bank: |IFFT(FFT(x) · G_k)| for the K = 20 Gabor transfer functions, each averaged over 4 × 4 blocks.
Output order: channel, then filter k (scales in order, orientations within a scale), then block x·4 + y.

Letters: B batch, C colour channels (3), K filters (20), S image side, P padded side, G blocks per side (4).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from qkcopy.data.images import load_image
from qkcopy.data.transforms import GIST_SIZE, gist_input

logger = logging.getLogger(__name__)

GIST_DIM = 960  # 3 channels · (8 + 8 + 4) filters · 4 · 4 blocks
PAD = 5  # lear_gist's mirror padding for the prefilter
MIN_SIZE = 8  # lear_gist refuses smaller images
_CPU_CHUNK_BYTES = 1 << 24  # CPU forward runs in chunks with ~16 MB of filter responses (13 images at S = 32)


def _centred_frequencies(n: int) -> tuple[np.ndarray, np.ndarray]:
    """lear_gist's frequency grid: f = i − n/2 laid out with DC centred, then fftshift-ed. (n, n) float64 each.

    For even n this is the usual FFT frequency layout (Nyquist as −n/2); odd n follows lear_gist literally.
    """
    f = np.arange(n, dtype=np.float64) - n / 2.0
    fy, fx = np.meshgrid(f, f, indexing="ij")
    return np.fft.fftshift(fx), np.fft.fftshift(fy)


def prefilter_transfer(padded: int, fc: float = 4.0) -> np.ndarray:
    """Gaussian low-pass transfer function exp(−|f|²/s1²), s1 = fc/√ln2, on the padded grid. (P, P) float64."""
    fx, fy = _centred_frequencies(padded)
    s1 = fc / math.sqrt(math.log(2.0))
    return np.exp(-(fx**2 + fy**2) / s1**2)


def gabor_transfer(size: int, orientations: Sequence[int] = (8, 8, 4)) -> np.ndarray:
    """Gabor transfer functions of lear_gist's create_gabor, scales then orientations. (K, S, S) float64."""
    fx, fy = _centred_frequencies(size)
    fr = np.sqrt(fx**2 + fy**2)  # radial frequency
    theta = np.arctan2(fy, fx)
    filters = []
    for scale, n_or in enumerate(orientations):
        a, b, c = 0.35, 0.3 / 1.85**scale, 16.0 * n_or**2 / 32.0**2
        for j in range(n_or):
            t = theta + math.pi * j / n_or
            t = np.where(t < -math.pi, t + 2 * math.pi, np.where(t > math.pi, t - 2 * math.pi, t))
            radial = -10.0 * a * (fr / size / b - 1.0) * (fr / size / b - 1.0)  # H = W = size
            filters.append(np.exp(radial - 2.0 * c * math.pi * t**2))
    return np.stack(filters)


def block_weights(size: int, blocks: int = 4) -> np.ndarray:
    """Averaging weights of lear_gist's down_N: block i covers [i·S/G, (i+1)·S/G) (integer division). (G, S)."""
    bounds = [i * size // blocks for i in range(blocks + 1)]
    weights = np.zeros((blocks, size), dtype=np.float64)
    for i in range(blocks):
        weights[i, bounds[i] : bounds[i + 1]] = 1.0 / (bounds[i + 1] - bounds[i])
    return weights


def _mirror_index(n: int, pad: int) -> torch.Tensor:
    """Indices of symmetric (edge-repeating) padding: pad−1 … 0, 0 … n−1, n−1 … n−pad. (n + 2·pad,) int64."""
    idx = np.concatenate([np.arange(pad - 1, -1, -1), np.arange(n), np.arange(n - 1, n - pad - 1, -1)])
    return torch.from_numpy(idx)


class Gist(torch.nn.Module):
    """Batched colour GIST: forward (B, 3, S, S) float 0..255 -> (B, 3·K·G²) float32 (960 by default).

    The filters are float32 buffers derived from the arguments (not in the state_dict). Mixed precision:
    use autocast (disabled inside forward); module.half() would round the filters and lose exactness.
    """

    def __init__(
        self, size: int = GIST_SIZE, fc: float = 4.0, orientations: Sequence[int] = (8, 8, 4), blocks: int = 4
    ) -> None:
        super().__init__()
        if size < max(MIN_SIZE, blocks, PAD):
            raise ValueError(f"GIST image side must be >= {max(MIN_SIZE, blocks, PAD)}, got {size}")
        if not orientations or any(n < 1 for n in orientations):
            raise ValueError(f"orientations must be positive counts per scale, got {orientations}")
        self.size, self.fc, self.orientations, self.blocks = size, fc, tuple(orientations), blocks
        self.dim = 3 * sum(self.orientations) * blocks * blocks
        self.cpu_chunk = max(1, _CPU_CHUNK_BYTES // (3 * sum(self.orientations) * size * size * 20))
        f32 = lambda a: torch.from_numpy(a).to(torch.float32)  # noqa: E731
        self.register_buffer("prefilter", f32(prefilter_transfer(size + 2 * PAD, fc)), persistent=False)
        self.register_buffer("gabor", f32(gabor_transfer(size, self.orientations)), persistent=False)
        self.register_buffer("pool", f32(block_weights(size, blocks)), persistent=False)
        self.register_buffer("pad_index", _mirror_index(size, PAD), persistent=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, fc={self.fc}, orientations={self.orientations}, blocks={self.blocks}"

    def _lowpass(self, x: torch.Tensor) -> torch.Tensor:
        """IFFT(FFT(x) · gfc) over the last two dims, complex (torch's ifft2 divides by P², like lear_gist)."""
        return torch.fft.ifft2(torch.fft.fft2(x) * self.prefilter)

    def prefilter_image(self, x: torch.Tensor) -> torch.Tensor:
        """lear_gist's color_prefilt: (B, 3, S, S) float32 0..255 -> (B, 3, S, S) float32 whitened."""
        x = torch.log(x + 1.0)
        x = x[..., self.pad_index, :][..., self.pad_index]  # (B, 3, P, P) mirror padded
        x = x - self._lowpass(x).real
        m2 = x.mean(dim=1, keepdim=True).square()  # (B, 1, P, P)
        local_std = self._lowpass(m2).abs().sqrt()  # (B, 1, P, P)
        x = x / (0.2 + local_std)
        return x[..., PAD:-PAD, PAD:-PAD]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.size
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Gist expects a (B, 3, {s}, {s}) tensor of pixels 0..255, got {got}")
        if not x.is_floating_point():
            raise ValueError(f"Gist expects floating-point pixels 0..255, got dtype {x.dtype}")
        if x.shape[0] == 0:  # MKL refuses empty FFTs
            return x.new_zeros((0, self.dim), dtype=torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.float32)
            if x.device.type != "cpu" or x.shape[0] <= self.cpu_chunk:
                return self._describe(x)
            # on CPU, chunks whose (b, 3, K, S, S) complex intermediate stays near the cache run ~2× faster
            return torch.cat([self._describe(chunk) for chunk in x.split(self.cpu_chunk)])

    def _describe(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 pixels -> (B, 3·K·G²) float32."""
        x = self.prefilter_image(x)
        spectrum = torch.fft.fft2(x)  # (B, 3, S, S) complex64
        response = torch.fft.ifft2(spectrum[:, :, None] * self.gabor).abs()  # (B, 3, K, S, S) float32
        # block means; index order (x block, y block) as lear_gist's down_N writes res[x·G + y]
        pooled = torch.einsum("bckyx,vx,uy->bckvu", response, self.pool, self.pool)  # (B, 3, K, G, G)
        return pooled.reshape(x.shape[0], -1)


def _dft(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the n-point DFT matrix exp(−2πi·jk/n), (n, n) float32 each."""
    jk = np.outer(np.arange(n), np.arange(n)) % n  # reduce first: exact angles for large jk
    angle = 2.0 * math.pi * jk / n
    return torch.from_numpy(np.cos(angle).astype(np.float32)), torch.from_numpy(-np.sin(angle).astype(np.float32))


class DftGist(torch.nn.Module):
    """`Gist` with its FFTs as real matmuls (exportable to any ONNX opset): (B, 3, S, S) 0..255 → (B, 960)."""

    def __init__(self, gist: Gist) -> None:
        super().__init__()
        self.size = gist.size
        for name in ("prefilter", "gabor", "pool", "pad_index"):
            self.register_buffer(name, getattr(gist, name).clone(), persistent=False)
        for tag, n in (("p", gist.size + 2 * PAD), ("s", gist.size)):
            re, im = _dft(n)
            self.register_buffer(f"f{tag}_re", re, persistent=False)
            self.register_buffer(f"f{tag}_im", im, persistent=False)

    @staticmethod
    def _fft2_real(x: torch.Tensor, fr: torch.Tensor, fi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FFT2 of a real (..., n, n) tensor: F·x·F = (Fr x Fr − Fi x Fi) + i(Fr x Fi + Fi x Fr)."""
        a_re, a_im = fr @ x, fi @ x
        return a_re @ fr - a_im @ fi, a_re @ fi + a_im @ fr

    @staticmethod
    def _ifft2(y_re, y_im, fr, fi) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse FFT2 of a complex (..., n, n) tensor: conj(F)·y·conj(F) / n², conj(F) = Fr − i·Fi."""
        n2 = fr.shape[0] * fr.shape[0]
        a_re, a_im = fr @ y_re + fi @ y_im, fr @ y_im - fi @ y_re
        return (a_re @ fr + a_im @ fi) / n2, (a_im @ fr - a_re @ fi) / n2

    def _lowpass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        re, im = self._fft2_real(x, self.fp_re, self.fp_im)
        return self._ifft2(re * self.prefilter, im * self.prefilter, self.fp_re, self.fp_im)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.log(x.float() + 1.0)
        x = x[..., self.pad_index, :][..., self.pad_index]  # (B, 3, P, P) mirror padded
        x = x - self._lowpass(x)[0]
        m2 = x.mean(dim=1, keepdim=True).square()  # (B, 1, P, P)
        lp_re, lp_im = self._lowpass(m2)
        x = x / (0.2 + (lp_re.square() + lp_im.square()).sqrt().sqrt())
        x = x[..., PAD:PAD + self.size, PAD:PAD + self.size]  # (B, 3, S, S)
        s_re, s_im = self._fft2_real(x, self.fs_re, self.fs_im)  # (B, 3, S, S) each
        g = self.gabor  # (K, S, S)
        r_re, r_im = self._ifft2(s_re[:, :, None] * g, s_im[:, :, None] * g, self.fs_re, self.fs_im)
        response = (r_re.square() + r_im.square()).sqrt()  # (B, 3, K, S, S)
        pooled = torch.einsum("bckyx,vx,uy->bckvu", response, self.pool, self.pool)  # (B, 3, K, G, G)
        return pooled.reshape(x.shape[0], -1)



def _as_pil(item: Image.Image | str | Path) -> Image.Image:
    return item if isinstance(item, Image.Image) else load_image(item)  # raises ImageError naming the file


def compute_gist(
    images: Iterable[Image.Image | str | Path],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    size: int = GIST_SIZE,
    progress: bool = True,
) -> np.ndarray:
    """GIST of PIL images or image paths (read with qkcopy.images.load_image). (N, 960) float32.

    An unreadable file raises qkcopy.images.ImageError (rows must stay aligned with the inputs).
    On GPU a batch needs about 60 · S² · 20 bytes per image (1.2 MB at S = 32, 20 MB at 128).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = Gist(size).to(device)
    total = len(images) if hasattr(images, "__len__") else None
    out: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        x = torch.stack(batch).to(device)  # (B, 3, S, S)
        with torch.no_grad():
            out.append(model(x).cpu().numpy())
        batch.clear()

    for item in tqdm(images, total=total, desc="gist", unit="img", disable=not progress):
        batch.append(gist_input(_as_pil(item), size))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros((0, model.dim), dtype=np.float32)
