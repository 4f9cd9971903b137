"""Tests of nninv.metrics against closed forms and a brute-force NumPy SSIM."""

import math

import numpy as np
import pytest
import torch

from nninv.errors import NNInvError
from nninv.metrics import mean_psnr, psnr, ssim

# Agreement with the float64 brute-force reference, per dtype of the inputs.
EPS = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in EPS]


def brute_ssim(x: np.ndarray, y: np.ndarray, data_range: float, win: int) -> float:
    """SSIM of one (C, H, W) image pair, window by window, straight from the definition."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels, h, w = x.shape
    values = []
    for c in range(channels):
        for i in range(h - win + 1):
            for j in range(w - win + 1):
                a = x[c, i : i + win, j : j + win].ravel()
                b = y[c, i : i + win, j : j + win].ravel()
                mu_a, mu_b = a.mean(), b.mean()
                var_a, var_b = a.var(ddof=1), b.var(ddof=1)
                cov = ((a - mu_a) * (b - mu_b)).sum() / (a.size - 1)
                num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
                den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
                values.append(num / den)
    return float(np.mean(values))


def brute_psnr(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((x - y) ** 2))
    return 10 * math.log10(data_range**2 / mse)


def pair(shape, noise=0.2, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x.to(dtype), y.to(dtype)


# ---------------------------------------------------------------- PSNR


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.5, 0.1, 1e-3])
def test_psnr_constant_offset(dtype, offset):
    ref = torch.rand(3, 1, 8, 8, dtype=dtype)
    out = psnr(ref + offset, ref)
    assert out.shape == (3,) and out.dtype == dtype
    expected = torch.full((3,), -20 * math.log10(offset), dtype=dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e3 * EPS[dtype])


def test_psnr_data_range():
    ref = torch.zeros(2, 5, 5, dtype=torch.float64)
    # An error of 1 grey level out of 255.
    torch.testing.assert_close(
        psnr(ref + 1, ref, data_range=255.0), torch.full((2,), 20 * math.log10(255.0)).double()
    )


@pytest.mark.parametrize("shape", [(4, 12, 12), (4, 1, 12, 12), (4, 3, 9, 11), (4, 50)])
def test_psnr_matches_brute_force(shape):
    x, y = pair(shape)
    expected = [brute_psnr(x[i].numpy(), y[i].numpy(), 1.0) for i in range(shape[0])]
    torch.testing.assert_close(psnr(x, y), torch.tensor(expected, dtype=torch.float64))


def test_psnr_identical_is_inf():
    x, y = pair((3, 6, 6))
    y[1] = x[1]
    out = psnr(x, y)
    assert math.isinf(out[1]) and out[1] > 0
    assert torch.isfinite(out[[0, 2]]).all()
    assert mean_psnr(x, y) == math.inf


def test_psnr_integer_images_in_float64():
    a = torch.tensor([[[0, 10], [20, 30]]], dtype=torch.uint8)
    b = torch.tensor([[[2, 10], [20, 30]]], dtype=torch.uint8)
    out = psnr(a, b, data_range=255)
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(10 * math.log10(255**2 / 1.0))


def test_mean_psnr():
    x, y = pair((5, 7, 7))
    assert isinstance(mean_psnr(x, y), float)
    assert mean_psnr(x, y) == pytest.approx(psnr(x, y).mean().item())


# ---------------------------------------------------------------- SSIM


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "win"),
    [
        ((3, 10, 10), 7),
        ((2, 1, 9, 12), 7),
        ((2, 3, 8, 8), 7),
        ((2, 1, 11, 9), 3),
        ((1, 2, 6, 5), 5),
    ],
)
def test_ssim_matches_brute_force(dtype, shape, win):
    x, y = pair(shape, dtype=dtype)
    out = ssim(x, y, win_size=win)
    assert out.shape == (shape[0],) and out.dtype == dtype
    x64, y64 = x.double().numpy(), y.double().numpy()
    if x64.ndim == 3:
        x64, y64 = x64[:, None], y64[:, None]
    expected = [brute_ssim(x64[i], y64[i], 1.0, win) for i in range(shape[0])]
    torch.testing.assert_close(
        out.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=EPS[dtype]
    )


def test_ssim_data_range_matches_brute_force():
    x, y = pair((2, 1, 9, 9))
    x, y = 255 * x, 255 * y
    expected = [brute_ssim(x[i].numpy(), y[i].numpy(), 255.0, 7) for i in range(2)]
    torch.testing.assert_close(ssim(x, y, data_range=255.0), torch.tensor(expected).double())


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssim_identical_is_one(dtype):
    x, _ = pair((4, 1, 16, 16), dtype=dtype)
    x[0] = 0.3  # a flat image, where only the constants keep SSIM defined
    torch.testing.assert_close(ssim(x, x), torch.ones(4, dtype=dtype), rtol=0, atol=EPS[dtype])


def test_ssim_decreases_with_noise():
    x, _ = pair((3, 1, 20, 20))
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    scores = torch.stack([ssim(x, x + s * noise) for s in (0.0, 0.01, 0.05, 0.2, 1.0)])
    assert (scores[1:] < scores[:-1]).all()
    assert (scores[-1] < 0.2).all()


def test_ssim_symmetric():
    x, y = pair((2, 12, 12))
    torch.testing.assert_close(ssim(x, y), ssim(y, x))


def test_metrics_follow_device_and_shape_convention():
    x, y = pair((2, 1, 8, 8), dtype=torch.float32)
    torch.testing.assert_close(ssim(x, y), ssim(x[:, 0], y[:, 0]))
    torch.testing.assert_close(psnr(x, y), psnr(x.flatten(1), y.flatten(1)))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_shape_mismatch(fn):
    with pytest.raises(NNInvError, match=r"same shape, got \(2, 8, 8\) and \(2, 8, 9\)"):
        fn(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_no_batch_dimension(fn):
    with pytest.raises(NNInvError, match=r"batch .* got shape \(8,\)"):
        fn(torch.zeros(8), torch.zeros(8))


@pytest.mark.parametrize("fn", [psnr, ssim])
@pytest.mark.parametrize("data_range", [0.0, -1.0])
def test_bad_data_range(fn, data_range):
    with pytest.raises(NNInvError, match="data_range must be positive"):
        fn(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), data_range)


def test_ssim_errors():
    with pytest.raises(NNInvError, match=r"expected images \(N, H, W\) or \(N, C, H, W\)"):
        ssim(torch.zeros(2, 64), torch.zeros(2, 64))
    with pytest.raises(NNInvError, match="5x8 are smaller than the 7x7 window"):
        ssim(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))
    for win in (4, 1, 2.0):
        with pytest.raises(NNInvError, match="win_size must be"):
            ssim(torch.zeros(1, 9, 9), torch.zeros(1, 9, 9), win_size=win)
