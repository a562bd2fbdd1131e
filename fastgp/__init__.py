"""fastgp: fused gradient penalties for WGAN-GP and friends.

Public API: ``gradient_penalty``, ``r1_penalty``, ``r2_penalty``, ``dragan_penalty``,
``interpolate``, ``penalty_from_grads``, and ``compile_step`` for whole compiled training
steps. See README.md.
"""

from fastgp import ops as _ops  # noqa: F401  (defines the torch.ops.fastgp schemas)
from fastgp.backends import BackendUnavailable
from fastgp.compile import compile_step
from fastgp.functional import interpolate, penalty_from_grads
from fastgp.penalties import dragan_penalty, gradient_penalty, r1_penalty, r2_penalty
from fastgp.validation import loss_scale

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "compile_step",
    "dragan_penalty",
    "gradient_penalty",
    "interpolate",
    "loss_scale",
    "penalty_from_grads",
    "r1_penalty",
    "r2_penalty",
    "__version__",
]
