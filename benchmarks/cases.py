"""The benchmark grid: operations, modes, sizes, and the bytes each operation must move.

Counted bytes (``es`` = bytes per element of the input dtype, N = B * D elements) are what a
single fused pass has to read and write; every provider of a case is credited with the same
count, so its GB/s is an *effective* bandwidth and eager PyTorch, which moves more, shows
lower numbers:

- interpolate fwd: read real and fake, write x_hat: ``3 N es`` (+ ``4 B`` for alpha).
- interpolate fwd+bwd: the forward, then read grad_out and write grad_real and grad_fake:
  ``6 N es`` (+ ``4 B``).
- penalty fwd: read g once: ``N es`` (+ ``4 B`` for the norms).
- penalty fwd+bwd: read g forward, read g and write dP/dg backward: ``3 N es`` (+ ``4 B``),
  i.e. 12 bytes per fp32 element as issue 4 counts it.
- copy (the speed of light of a case): a plain ``dst.copy_(src)`` of the same total bytes
  (half read, half written).
"""

from __future__ import annotations

from dataclasses import dataclass

OPS = ("interpolate", "penalty")
MODES = ("fwd", "fwdbwd")

# Per-sample shapes from a 2-D toy point to a 128x128 RGB image; issue 4's grid.
PER_SAMPLE_SHAPES: tuple[tuple[int, ...], ...] = (
    (2,),
    (1, 28, 28),
    (3, 32, 32),
    (3, 64, 64),
    (3, 128, 128),
)
BATCHES = (1, 16, 64, 256)
# One case of at least 16M elements (256 x 4 x 128 x 128 = 16,777,216).
LARGE_CASE = (256, (4, 128, 128))

# Two sizes (a small MNIST batch, a CIFAR-sized one): every code path, little compiling.
QUICK_SIZES: tuple[tuple[int, tuple[int, ...]], ...] = ((16, (1, 28, 28)), (256, (3, 32, 32)))


@dataclass(frozen=True)
class OpCase:
    """One microbenchmark: ``op`` in ``mode`` on a (batch, *sample_shape) tensor."""

    op: str
    mode: str
    batch: int
    sample_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.batch < 1 or any(d < 1 for d in self.sample_shape):
            raise ValueError(
                f"batch and sample_shape must be positive, got {self.batch}, {self.sample_shape}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch, *self.sample_shape)

    @property
    def per_sample(self) -> int:
        n = 1
        for d in self.sample_shape:
            n *= d
        return n

    @property
    def elements(self) -> int:
        return self.batch * self.per_sample

    @property
    def name(self) -> str:
        return f"{self.op}-{self.mode}-{self.batch}x" + "x".join(map(str, self.sample_shape))


def counted_bytes(case: OpCase, element_size: int) -> int:
    """Bytes one fused pass of ``case`` must move; see the module docstring for the counts."""
    n, b = case.elements, case.batch
    passes = {
        ("interpolate", "fwd"): 3,
        ("interpolate", "fwdbwd"): 6,
        ("penalty", "fwd"): 1,
        ("penalty", "fwdbwd"): 3,
    }[(case.op, case.mode)]
    return passes * n * element_size + 4 * b


def largest_output_bytes(case: OpCase, element_size: int) -> int:
    """Bytes of the largest tensor fastgp allocates for ``case``: one (B, *) tensor (x̂, an
    input gradient, dP/dg) except in penalty fwd, whose outputs are the penalty and the
    (B,) fp32 norms. What decides whether fastgp's CPU output cache can serve the case."""
    if (case.op, case.mode) == ("penalty", "fwd"):
        return 4 * case.batch
    return case.elements * element_size


def size_grid(quick: bool, large: bool = True) -> list[tuple[int, tuple[int, ...]]]:
    """(batch, sample_shape) pairs: issue 4's grid (+ the >= 16M case), or the quick one."""
    if quick:
        return list(QUICK_SIZES)
    grid = [(b, s) for s in PER_SAMPLE_SHAPES for b in BATCHES]
    if large:
        grid.append(LARGE_CASE)
    return grid


def op_cases(
    sizes: list[tuple[int, tuple[int, ...]]], ops: tuple[str, ...], modes: tuple[str, ...]
) -> list[OpCase]:
    """Every (op, mode, size) combination, ordered by op, mode, then size."""
    return [OpCase(op, mode, b, s) for op in ops for mode in modes for b, s in sizes]
