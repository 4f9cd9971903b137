"""The model front: a PyTorch module, or a Keras/ONNX/TorchScript file turned into
one, analysed into a chain of known layers (affine maps, invertible elementwise
activations, shifts) that the inversion methods and the preimage geometry read.

``nninv.model.io`` loads model files, ``nninv.model.layers`` holds the small
layers the loaders emit (``Reshape``, ``Permute``), and ``nninv.model.diagnose``
reports rank, nullity and injectivity layer by layer.
"""

from .diagnose import Diagnosis, diagnose
from .io import load_model
from .layers import Permute, Reshape

__all__ = ["Diagnosis", "Permute", "Reshape", "diagnose", "load_model"]
