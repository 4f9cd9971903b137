"""
The closest input of another class, with a proof
================================================

A small ReLU network on scikit-learn's 8x8 digits. ``nninv.closest`` solves a
MILP (HiGHS) for the nearest input, in the L-inf norm, that the network puts
in another class: an adversarial example whose distance is proven minimal.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

import nninv

X, y = load_digits(return_X_y=True)
X = X / 16.0
clf = MLPClassifier((16,), max_iter=400, random_state=0).fit(X[:1200], y[:1200])

x0 = torch.from_numpy(X[1200:1201])
label = int(clf.predict(X[1200:1201])[0])
target = (label + 1) % 10
res = nninv.closest(clf, x0, nninv.ClassTarget(target), norm="linf", bounds=(0, 1))
print(res.status, "bound", round(float(res.bound), 5), "distance", round(float(res.distance), 5))
print("predicted:", label, "->", int(clf.predict(res.x.numpy().reshape(1, -1))[0]))

# %%
fig, axes = plt.subplots(1, 3, figsize=(6, 2.2))
diff = (res.x - x0).reshape(8, 8).numpy()
for ax, img, title in [
    (axes[0], X[1200].reshape(8, 8), f"original ({label})"),
    (axes[1], res.x.reshape(8, 8).numpy(), f"closest {target}"),
    (axes[2], diff, f"difference (linf {float(res.distance):.3f})"),
]:
    ax.imshow(
        img,
        cmap="gray" if ax is not axes[2] else "RdBu",
        vmin=-np.abs(diff).max() if ax is axes[2] else 0,
        vmax=np.abs(diff).max() if ax is axes[2] else 1,
    )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
