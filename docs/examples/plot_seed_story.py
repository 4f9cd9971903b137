"""
The seed's story: pinv gives noise, a prior gives a digit
=========================================================

Train ``f(x) = sigmoid(x W^T + b)`` (784 -> 10) on MNIST digits shipped with a
dependency, then invert its outputs. The pseudo-inverse reproduces the output
exactly, yet its "image" is noise: it is the minimum-norm member of a
774-dimensional preimage. A Gaussian prior fitted to the digits picks the
member that looks like one, with the same exact output.
"""

import matplotlib.pyplot as plt
import torch

import nninv
from nninv.datasets import load_embedded
from nninv.metrics import psnr
from nninv.priors import GaussianPrior

torch.manual_seed(0)
data = load_embedded()
X, labels = data.flat()[:4000], data.labels[:4000]
f = torch.nn.Sequential(torch.nn.Linear(784, 10), torch.nn.Sigmoid())
opt = torch.optim.Adam(f.parameters(), lr=1e-2)
onehot = torch.nn.functional.one_hot(labels, 10).float()
for _ in range(60):
    opt.zero_grad()
    torch.nn.functional.binary_cross_entropy(f(X), onehot).backward()
    opt.step()
f = f.double()

test = data.flat()[4000::125][:8].double()  # held out, several classes
y = f(test).detach()
print("preimage dimension:", nninv.diagnose(f, X.double()).preimage_dim)

pinv = nninv.invert(f, y, method="pinv")
gauss = nninv.invert(f, y, method="analytic", prior=GaussianPrior.fit(X.double()))
for name, inv in [("pinv", pinv), ("Gaussian prior", gauss)]:
    print(
        f"{name:15s} max residual {float(inv.residual.max()):.1e}  "
        f"PSNR {float(psnr(inv.x.clamp(0, 1), test).mean()):.1f} dB"
    )

# %%
# Every row reproduces the same outputs to rounding; only the prior's looks
# like the original.
fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
rows = [("original", test), ("pinv", pinv.x), ("Gaussian prior", gauss.x)]
for r, (name, imgs) in enumerate(rows):
    for c in range(8):
        ax = axes[r, c]
        ax.imshow(imgs[c].reshape(28, 28).clamp(0, 1).detach(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
fig.tight_layout()
