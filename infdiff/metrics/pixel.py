"""PSNR and SSIM of images against their ground truth, one value per image (docs/architecture.md, "Metrics").

Used where an exact reference exists: super-resolution against the procedural dataset's high-resolution
render, and resolution consistency (a high-resolution sample area-downsampled vs the low-resolution one).

Inputs are ``[N, C, H, W]`` numpy arrays or torch tensors, either both uint8 (values 0..255, data range
L = 255) or both floating in [-1, 1] (L = 2). Mixing the two kinds is refused: a uint8 image compared with
its own float version would otherwise score as noise.

* PSNR = 10 log10(L^2 / MSE), the MSE over all channels and pixels of one image; identical images give
  ``inf``. For ``f = u8 / 127.5 - 1`` both scales give the same value (MSE and L^2 scale alike).
* SSIM (Wang et al. 2004) exactly as ``skimage.metrics.structural_similarity(x, y, data_range=L,
  channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, the setting most
  papers report: Gaussian window (sigma 1.5, 11 taps), K1 = 0.01, K2 = 0.03, per channel, and the mean
  of the SSIM map over the *valid* region (skimage filters with reflect padding and then crops
  (window - 1) / 2 pixels per side, i.e. keeps exactly the pixels whose window lies inside the image; a
  valid convolution gives those pixels without any padding), then the mean over channels.

  One deliberate difference for floats: SSIM's luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
  is not shift invariant, so [-1, 1] images are shifted to [0, 2] first (still L = 2). Together with C1,
  C2 scaling with L^2 this makes ``ssim(u8) == ssim(u8 / 127.5 - 1)``, i.e. the value is the one skimage
  gives for the uint8 (or [0, 1]) images; on raw [-1, 1] values skimage would give a different number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["psnr", "ssim", "gaussian_window"]

K1, K2 = 0.01, 0.03
# Images per chunk of the SSIM computation: five float64 filtered maps per image are alive at once.
_CHUNK = 16


def _kind(t) -> str:
    """``"uint8"`` or ``"float"``: the kind of a numpy array's or torch tensor's dtype; others are refused."""
    name = str(t.dtype).removeprefix("torch.")  # numpy "uint8", "float32"; torch "torch.uint8", "torch.bfloat16"
    if name == "uint8":
        return "uint8"
    if name.startswith(("float", "bfloat")):
        return "float"
    raise TypeError(f"images must be uint8 (0..255) or float in [-1, 1], got {t.dtype}")


def _pair(x, y):
    """Both inputs as float64 in a range starting at 0, and L: numpy arrays if both are numpy (so that
    scoring numpy samples, as the consistency metric does, never imports torch), else torch tensors on
    ``x``'s device.

    uint8 -> values 0..255, L = 255; float in [-1, 1] -> shifted to [0, 2], L = 2 (the shift leaves MSE
    unchanged and makes SSIM agree between the two kinds, see the module docstring).
    """
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
        import torch

        x, y = torch.as_tensor(x), torch.as_tensor(y)
        y = y.to(x.device)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two image batches [N, C, H, W] of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    kinds = _kind(x), _kind(y)
    if kinds[0] != kinds[1]:
        raise TypeError(f"both image batches must be of the same kind, got {kinds[0]} and {kinds[1]}: "
                        "convert with infdiff.data.to_float / to_uint8 first")
    shift, L = (0.0, 255.0) if kinds[0] == "uint8" else (1.0, 2.0)
    as64 = (lambda t: t.astype(np.float64)) if isinstance(x, np.ndarray) else (lambda t: t.double())
    return as64(x) + shift, as64(y) + shift, L


def psnr(x, y) -> np.ndarray:
    """Peak signal-to-noise ratio per image, in dB.

    Args:
        x, y: ``[N, C, H, W]`` images, both uint8 or both float in [-1, 1] (numpy or torch).
    Returns:
        float64 ``[N]``; ``inf`` where an image equals its reference.
    """
    a, b, L = _pair(x, y)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    mse = mse if isinstance(mse, np.ndarray) else mse.cpu().numpy()
    # MSE = 0 -> log10(L^2 / 0) = +inf is the right answer; silence numpy's divide warning for it.
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(L**2 / mse)


def gaussian_window(window: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian, float64 ``[window]``: scipy.ndimage's kernel, which skimage's SSIM uses.

    skimage derives the window from sigma (``2 * int(3.5 * sigma + 0.5) + 1`` = 11 for sigma 1.5); here it
    is an argument, so that default arguments reproduce skimage and other windows remain possible.
    """
    import torch

    if window < 1 or window % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd number of pixels, got {window}")
    r = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def ssim(x, y, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Structural similarity per image (mean over channels of the mean SSIM map over the valid region).

    Args:
        x, y: ``[N, C, H, W]`` images, both uint8 or both float in [-1, 1] (numpy or torch).
        window: Gaussian window size in pixels (odd; 11 = skimage's value for sigma 1.5).
        sigma: Gaussian window std in pixels.
    Returns:
        float64 ``[N]`` in [-1, 1]; exactly 1 for identical images.
    """
    import torch
    from torch.nn import functional as F

    a, b, L = _pair(torch.as_tensor(x), torch.as_tensor(y))
    n, c, h, w = a.shape
    if min(h, w) < window:
        raise ValueError(f"images of {h}x{w} pixels are smaller than the SSIM window ({window})")
    g = gaussian_window(window, sigma).to(a.device)
    # Separable valid convolution: rows, then columns. Channels are folded into the batch (per channel).
    gx, gy = g.view(1, 1, 1, window), g.view(1, 1, window, 1)

    def mu(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, gx), gy)

    C1, C2 = (K1 * L) ** 2, (K2 * L) ** 2
    out = []
    for s in range(0, n, _CHUNK):
        p = a[s:s + _CHUNK].reshape(-1, 1, h, w)
        q = b[s:s + _CHUNK].reshape(-1, 1, h, w)
        mx, my = mu(p), mu(q)
        # Population (not sample) moments: use_sample_covariance=False in skimage's terms.
        vx = mu(p * p) - mx * mx
        vy = mu(q * q) - my * my
        vxy = mu(p * q) - mx * my
        S = ((2 * mx * my + C1) * (2 * vxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
        # Mean over the valid map per channel, then over channels (all channels have equal-size maps).
        out.append(S.reshape(-1, c, S.shape[-2] * S.shape[-1]).mean(dim=(1, 2)))
    return torch.cat(out).cpu().numpy()
