"""nninv: invert trained neural networks.

Given a network ``f`` and an output ``y``, find inputs ``x`` with ``f(x) = y``,
tell how many there are (the preimage), and pick the ones a person would
recognise (with a prior over the data).
"""

__version__ = "0.1.0"

from . import priors
from .errors import NNInvError, NNInvWarning
from .methods.invert import invert
from .model.diagnose import Diagnosis, diagnose
from .model.io import load_model
from .result import Inversion
from .targets import ClassTarget, OutputSet, Polyhedron

__all__ = [
    "ClassTarget",
    "Diagnosis",
    "Inversion",
    "NNInvError",
    "NNInvWarning",
    "OutputSet",
    "Polyhedron",
    "__version__",
    "diagnose",
    "invert",
    "load_model",
    "priors",
]

from . import vnnlib  # noqa: E402
from .geometry.closest import Closest, closest  # noqa: E402
from .geometry.preimage import Preimage, preimage  # noqa: E402
from .geometry.verify import Verification, verify  # noqa: E402
from .methods.posterior import Posterior, posterior  # noqa: E402

__all__ += [
    "Closest",
    "Posterior",
    "Preimage",
    "Verification",
    "closest",
    "posterior",
    "preimage",
    "verify",
    "vnnlib",
]

from .region import Region, region  # noqa: E402

__all__ += ["Region", "region"]
