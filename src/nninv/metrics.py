"""Image similarity for judging reconstructions: PSNR and SSIM per sample.

Both take batches ``(N, H, W)`` or ``(N, C, H, W)`` (PSNR also any ``(N, ...)``)
and return one value per sample, computed in the inputs' dtype and on their
device. SSIM follows scikit-image's default
(``skimage.metrics.structural_similarity`` with its default arguments): a 7x7
uniform window, sample covariances, ``K1 = 0.01``, ``K2 = 0.03``, averaged over
the positions where the window fits and over channels.
"""

from __future__ import annotations

__all__ = ["mean_psnr", "psnr", "ssim"]

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import NNInvError


def _pair(x: Tensor, ref: Tensor, data_range: float, fn: str) -> tuple[Tensor, Tensor]:
    x, ref = torch.as_tensor(x), torch.as_tensor(ref)
    if x.shape != ref.shape:
        raise NNInvError(
            f"{fn}: x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}"
        )
    if x.ndim < 2:
        raise NNInvError(f"{fn}: expected a batch (N, ...) of images, got shape {tuple(x.shape)}")
    if not data_range > 0:
        raise NNInvError(f"{fn}: data_range must be positive, got {data_range}")
    dtype = torch.promote_types(x.dtype, ref.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64  # integer images: compute exactly, not in float32
    x, ref = x.to(dtype), ref.to(dtype)
    for name, t in (("x", x), ("ref", ref)):
        if not bool(torch.isfinite(t).all()):
            raise NNInvError(f"{fn}: {name} contains NaN or inf")
    return x, ref


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio of each sample, in decibels.

    ``PSNR = 10 log10(data_range**2 / MSE)`` with the mean squared error taken
    over all values of the sample.

    Parameters
    ----------
    x, ref : Tensor
        Batches of the same shape ``(N, ...)``, e.g. ``(N, H, W)`` or
        ``(N, C, H, W)``.
    data_range : float, optional
        Distance between the smallest and largest possible value (1 for
        images in [0, 1], 255 for uint8).

    Returns
    -------
    Tensor
        Shape ``(N,)``; ``inf`` where a sample equals its reference.

    Raises
    ------
    NNInvError
        If the shapes differ, there is no batch dimension, or ``data_range <= 0``.

    Examples
    --------
    >>> ref = torch.zeros(2, 4, 4)
    >>> psnr(ref + 0.1, ref)
    tensor([20., 20.])
    >>> psnr(ref, ref)
    tensor([inf, inf])
    """
    x, ref = _pair(x, ref, data_range, "psnr")
    mse = (x - ref).square().reshape(x.shape[0], -1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def mean_psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> float:
    """Mean over the batch of :func:`psnr`, in decibels.

    ``inf`` if any sample equals its reference.

    Examples
    --------
    >>> ref = torch.zeros(3, 8, 8)
    >>> round(mean_psnr(ref + 0.01, ref), 6)
    40.0
    """
    return float(psnr(x, ref, data_range).mean())


def ssim(x: Tensor, ref: Tensor, data_range: float = 1.0, *, win_size: int = 7) -> Tensor:
    """Structural similarity index of each sample (Wang et al. 2004).

    The local means, variances and covariance are taken over a
    ``win_size x win_size`` **uniform** window (not the paper's Gaussian), with
    the sample (``n - 1``) normalisation, and the SSIM map is averaged over the
    window positions that lie wholly inside the image and over channels. This
    is what ``skimage.metrics.structural_similarity(x, ref,
    data_range=data_range)`` computes for one image.

    Parameters
    ----------
    x, ref : Tensor
        Batches of the same shape, ``(N, H, W)`` or ``(N, C, H, W)``, with
        ``H, W >= win_size``.
    data_range : float, optional
        Distance between the smallest and largest possible value; sets the
        stabilising constants ``C1 = (0.01 data_range)**2`` and
        ``C2 = (0.03 data_range)**2``.
    win_size : int, optional
        Odd side of the window, at least 3.

    Returns
    -------
    Tensor
        Shape ``(N,)``; 1 where a sample equals its reference, lower the less
        alike they are (it can be negative).

    Raises
    ------
    NNInvError
        If the shapes differ or are not image batches, the images are smaller
        than the window, ``win_size`` is not an odd integer >= 3, or
        ``data_range <= 0``.

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality
    assessment: from error visibility to structural similarity", IEEE
    Transactions on Image Processing 13(4), 600-612, 2004.

    Examples
    --------
    >>> x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> ssim(x, x)
    tensor([1., 1.])
    >>> bool((ssim(x, x.flip(0)) < 0.5).all())
    True
    """
    x, ref = _pair(x, ref, data_range, "ssim")
    if x.ndim == 3:
        x, ref = x.unsqueeze(1), ref.unsqueeze(1)
    if x.ndim != 4:
        raise NNInvError(
            f"ssim: expected images (N, H, W) or (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if isinstance(win_size, bool) or not isinstance(win_size, int):
        raise NNInvError(f"ssim: win_size must be an int, got {win_size!r}")
    if win_size < 3 or win_size % 2 == 0:
        raise NNInvError(f"ssim: win_size must be odd and at least 3, got {win_size}")
    n, c, h, w = x.shape
    if h < win_size or w < win_size:
        raise NNInvError(
            f"ssim: images of {h}x{w} are smaller than the {win_size}x{win_size} window"
        )
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    a = x.reshape(n * c, 1, h, w)
    b = ref.reshape(n * c, 1, h, w)
    # One uniform average pool gives all five local means at once (much faster than a
    # grouped convolution in float64 on CPU).
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    mu_a, mu_b, m_aa, m_bb, m_ab = F.avg_pool2d(stack, win_size, stride=1).unbind(dim=1)
    n_win = win_size**2
    cov_norm = n_win / (n_win - 1)
    var_a = cov_norm * (m_aa - mu_a * mu_a)
    var_b = cov_norm * (m_bb - mu_b * mu_b)
    cov_ab = cov_norm * (m_ab - mu_a * mu_b)
    num = (2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).reshape(n, -1).mean(dim=1)
