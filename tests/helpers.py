"""Test helpers: comparisons that say where tensors disagree, input makers, eager baselines.

``classic_gradient_penalty`` and ``ctgan_gradient_penalty`` are the public eager
implementations fastgp replaces; drop-in tests compare against them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

# dtype -> (atol, rtol) for a result computed by a different but equally accurate route
# (another reduction order, fused rounding) than the expected value in the same dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 2e-3),  # fp16 has 11 significant bits: 1 ulp is 4.9e-4 relative
    torch.bfloat16: (1e-2, 1.6e-2),  # bf16 has 8: 1 ulp is 3.9e-3 relative
}

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _locations(mask: Tensor, limit: int = 5) -> str:
    idx = mask.nonzero()
    shown = ", ".join(str(tuple(i.tolist())) for i in idx[:limit])
    more = f" (+{idx.shape[0] - limit} more)" if idx.shape[0] > limit else ""
    return f"{shown}{more}"


def assert_close_report(
    actual: Tensor, expected: Tensor, atol: float, rtol: float, what: str = "tensor"
) -> None:
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise, NaN == NaN, inf == inf.

    On failure the message says where NaNs, infs and values disagree, the largest error
    and the index it occurs at. Shapes must match exactly (no broadcasting); dtypes may
    differ (both are compared in float64).
    """
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    problems = []
    nan_mismatch = a.isnan() != e.isnan()
    if nan_mismatch.any():
        problems.append(
            f"NaN where expected is not (or the reverse) at {_locations(nan_mismatch)} "
            f"({int(nan_mismatch.sum())} elements)"
        )
    inf_mismatch = (a.isinf() | e.isinf()) & (a != e) & ~(a.isnan() | e.isnan())
    if inf_mismatch.any():
        problems.append(f"infinities differ at {_locations(inf_mismatch)}")
    finite = a.isfinite() & e.isfinite()
    err = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = finite & (err > atol + rtol * e.abs())
    if bad.any():
        flat = int(torch.argmax(torch.where(bad, err, torch.zeros_like(err))))
        worst = tuple(torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
        worst = tuple(int(i) for i in worst)
        problems.append(
            f"{int(bad.sum())} of {a.numel()} values differ beyond atol={atol:g} rtol={rtol:g}; "
            f"largest error {float(err.max()):.3e} at {worst}: actual "
            f"{float(a[worst]):.17g} vs expected {float(e[worst]):.17g}; first at "
            f"{_locations(bad)}"
        )
    assert not problems, f"{what} ({actual.dtype}) mismatch:\n  " + "\n  ".join(problems)


def assert_no_worse_than_reference(
    actual: Tensor, same_precision_ref: Tensor, exact: Tensor, what: str = "tensor"
) -> None:
    """The flash-attention rule for low precision.

    ``actual`` (a fused kernel in fp16/bf16) must be no further from ``exact`` (the same
    computation in float64) than twice the error of ``same_precision_ref`` (PyTorch in the
    same low precision). A floor of one unit in the last place of the output dtype at the
    largest |exact| allows for a single different rounding when the reference happens to
    be exact.
    """
    e = exact.detach().to(torch.float64)
    err = (actual.detach().to(torch.float64) - e).abs().max()
    ref_err = (same_precision_ref.detach().to(torch.float64) - e).abs().max()
    ulp = torch.finfo(actual.dtype).eps * float(e.abs().max())
    assert torch.isfinite(err), f"{what}: non-finite values in the result"
    assert err <= 2 * ref_err + ulp, (
        f"{what} ({actual.dtype}): max error vs float64 {float(err):.3e} exceeds twice the "
        f"error of the same-precision reference ({float(ref_err):.3e}) plus one ulp ({ulp:.3e})"
    )


def assert_layout_of_empty_like(actual: Tensor, like: Tensor, what: str = "output") -> None:
    """``actual`` has the memory layout ``torch.empty_like(like)`` would have.

    Strides of size-1 dimensions are ignored: they never address memory, and PyTorch
    itself is not consistent about them.
    """
    expected = torch.empty_like(like)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}"
    differ = [
        i
        for i in range(actual.dim())
        if actual.shape[i] > 1 and actual.stride(i) != expected.stride(i)
    ]
    assert not differ, (
        f"{what}: strides {actual.stride()} differ from empty_like's {expected.stride()} "
        f"in dims {differ} (shape {tuple(actual.shape)})"
    )


def make_input(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    layout: str = "contiguous",
    requires_grad: bool = False,
    scale: float = 1.0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``scale`` times a standard-normal (B, *) tensor in one of several memory layouts.

    The values are drawn on CPU from ``seed`` (the same on every device) and then moved to
    ``device``, where the layout is made.

    layout: ``"contiguous"``; ``"channels_last"`` (4-D only); ``"transposed"`` (the last two
    dims swapped through a transpose, so the tensor is a non-contiguous view; needs 3+
    dims); ``"sliced"`` (every other element of the last dim of a wider tensor);
    ``"expanded"`` (one sample broadcast over the batch with stride 0, as autograd returns
    the gradient of a sum).

    Any later arithmetic or ``clone()`` may give up the layout (PyTorch makes non-dense
    results contiguous): scale here, and use ``grad_leaf`` for a differentiable copy. With
    ``requires_grad`` the result is a leaf with exactly this layout.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(size):
        return (torch.randn(size, generator=gen, dtype=torch.float64) * scale).to(device, dtype)

    if layout == "contiguous":
        t = normal(shape)
    elif layout == "channels_last":
        t = normal(shape).contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        t = normal(shape[:-2] + (shape[-1], shape[-2])).transpose(-1, -2)
    elif layout == "sliced":
        t = normal(shape[:-1] + (2 * shape[-1],))[..., ::2]
    elif layout == "expanded":
        t = normal((1, *shape[1:])).expand(shape)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    assert t.shape == torch.Size(shape)
    return t.requires_grad_(requires_grad)


def grad_leaf(t: Tensor) -> Tensor:
    """A leaf that requires grad with the values and the exact strides of ``t`` (no copy)."""
    leaf = t.detach().requires_grad_()
    assert leaf.stride() == t.stride()
    return leaf


def per_sample(alpha: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against ``like``."""
    return alpha.reshape((alpha.shape[0],) + (1,) * (like.dim() - 1))


def classic_gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    alpha: Tensor,
    lambda_gp: float = 10.0,
) -> Tensor:
    """The usual eager WGAN-GP (Gulrajani et al. 2017, as in most public PyTorch code).

    alpha: (B,) or (B, 1, ..., 1), one weight per sample. Differs from the textbook copy
    only in using ``reshape`` where it uses ``view`` (so channels_last gradients work).
    """
    b = real.shape[0]
    alpha = per_sample(alpha.reshape(b), real).to(real.dtype)
    interpolates = alpha * real + (1 - alpha) * fake
    if not interpolates.requires_grad:
        interpolates.requires_grad_(True)
    d_interpolates = critic(interpolates)
    gradients = torch.autograd.grad(
        outputs=d_interpolates,
        inputs=interpolates,
        grad_outputs=torch.ones_like(d_interpolates),
        create_graph=True,
        retain_graph=True,
    )[0]
    gradients = gradients.reshape(b, -1)
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean() * lambda_gp


def ctgan_gradient_penalty(
    discriminator: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    alpha: Tensor,
    pac: int = 10,
    lambda_: float = 10.0,
) -> Tensor:
    """CTGAN's ``Discriminator.calc_gradient_penalty`` (sdv-dev/CTGAN, ctgan/synthesizers).

    real, fake: (B, D); alpha: (B // pac, 1, 1) (or (B // pac,)), one weight per pack, as
    CTGAN draws it. ``fake`` is not detached (CTGAN passes the generator's output), so the
    penalty's gradient reaches it. When neither input requires grad the interpolates are
    made to, which CTGAN never needs.
    """
    d = real.size(1)
    alpha = alpha.reshape(-1, 1, 1).to(real.dtype)
    alpha = alpha.repeat(1, pac, d)
    alpha = alpha.view(-1, d)
    interpolates = alpha * real + ((1 - alpha) * fake)
    if not interpolates.requires_grad:
        interpolates.requires_grad_(True)
    disc_interpolates = discriminator(interpolates)
    gradients = torch.autograd.grad(
        outputs=disc_interpolates,
        inputs=interpolates,
        grad_outputs=torch.ones(disc_interpolates.size(), device=real.device),
        create_graph=True,
        retain_graph=True,
        only_inputs=True,
    )[0]
    gradients_view = gradients.view(-1, pac * d).norm(2, dim=1) - 1
    return ((gradients_view) ** 2).mean() * lambda_


class MLPCritic(nn.Module):
    """(B, D) -> (B, 1); smooth activations so second derivatives are non-trivial."""

    def __init__(self, dim: int, hidden: int = 16, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden, dtype=dtype),
            nn.Tanh(),
            nn.Linear(hidden, hidden, dtype=dtype),
            nn.SiLU(),
            nn.Linear(hidden, 1, dtype=dtype),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class ConvCritic(nn.Module):
    """(B, C, H, W) -> (B,) score, or with ``patch=True`` a (B, 1, H', W') patch map."""

    def __init__(self, channels: int, patch: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.patch = patch
        self.conv1 = nn.Conv2d(channels, 4, 3, stride=2, padding=1, dtype=dtype)
        self.conv2 = nn.Conv2d(4, 1 if patch else 8, 3, padding=1, dtype=dtype)
        self.head = nn.Linear(8, 1, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(nn.functional.leaky_relu(self.conv1(x), 0.2))
        if self.patch:
            return h
        return self.head(torch.tanh(h).mean(dim=(2, 3))).squeeze(1)


class ConditionalCritic(nn.Module):
    """critic(x, labels, scale=...): an embedding of the integer label joins the features."""

    def __init__(self, dim: int, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(classes, dim)
        self.body = MLPCritic(2 * dim)

    def forward(self, x: Tensor, labels: Tensor, scale: float = 1.0) -> Tensor:
        return scale * self.body(torch.cat([x, self.embed(labels)], dim=1))


class TwoInputCritic(nn.Module):
    """critic(image (B, C, H, W), vector (B, D)) -> (B, 1); both inputs reach the score."""

    def __init__(self, channels: int, hw: int, dim: int):
        super().__init__()
        self.body = MLPCritic(channels * hw * hw + dim)

    def forward(self, image: Tensor, vector: Tensor) -> Tensor:
        return self.body(torch.cat([image.reshape(image.shape[0], -1), vector], dim=1))


class CTGANDiscriminator(nn.Module):
    """CTGAN's Discriminator: scores packs of ``pac`` consecutive samples.

    Tanh where CTGAN has LeakyReLU (and no dropout): with a piecewise-linear critic the
    input gradient is locally constant, so no penalty gradient would reach ``fake`` and
    that part of the comparison could not fail.
    """

    def __init__(self, input_dim: int, pac: int, hidden: int = 16):
        super().__init__()
        self.pac = pac
        self.pacdim = input_dim * pac
        self.seq = nn.Sequential(
            nn.Linear(self.pacdim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        assert x.size()[0] % self.pac == 0
        return self.seq(x.view(-1, self.pacdim))


def param_grads(module: nn.Module) -> list[Tensor]:
    """Copies of the .grad of every parameter (zeros where none), in parameter order."""
    return [
        p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for p in module.parameters()
    ]


def kernels(backend: str, device: torch.device | str = "cpu") -> SimpleNamespace:
    """The four op-contract functions of ``backend``: the reference's functions for
    ``"torch"``, else the dispatcher ops that run it on ``device`` (signatures of
    ``fastgp.backends.reference``)."""
    from fastgp import ops
    from fastgp.backends import reference

    names = ("interpolate", "interpolate_backward", "penalty_forward", "penalty_backward")
    if backend == "torch":
        return SimpleNamespace(**{n: getattr(reference, n) for n in names})
    namespace = ops.op_namespace(backend, torch.device(device))
    return SimpleNamespace(**{n: getattr(namespace, n).default for n in names})


class OpCalls(TorchDispatchMode):
    """Records the names of the fastgp ops dispatched inside the block (``calls``)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace = func.namespace
        if namespace.startswith("fastgp"):
            self.calls.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def write_idx(path, array) -> None:
    """An IDX file of a uint8 array (IDX1 labels, IDX3 images), gzipped if it ends in .gz."""
    import gzip
    import struct
    from pathlib import Path

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def synthetic_digits(n: int, seed: int, num_classes: int = 10):
    """(images (n, 28, 28) uint8, labels (n,) uint8): class k is a bright 6x6 square at the
    k-th of 10 places on a noisy black background, easy for a small CNN to tell apart."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, k in enumerate(labels):
        top, left = 3 + (k // 5) * 13, 1 + (k % 5) * 5
        images[i, top : top + 8, left : left + 5] = rng.integers(200, 256)
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_labelled_mnist(folder, n: int = 200, seed: int = 0, test: int = 50, labels=True):
    """Tiny MNIST IDX files of ``synthetic_digits`` in ``folder`` (train images and, with
    ``labels``, train labels; ``test`` t10k images when > 0)."""
    from pathlib import Path

    folder = Path(folder)
    images, digit_labels = synthetic_digits(n, seed)
    write_idx(folder / "train-images-idx3-ubyte", images)
    if labels:
        write_idx(folder / "train-labels-idx1-ubyte", digit_labels)
    if test:
        write_idx(folder / "t10k-images-idx3-ubyte", synthetic_digits(test, seed + 1)[0])
    return images, digit_labels
