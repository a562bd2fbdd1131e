"""Generator / critic pairs for the trainer: the WGAN-GP toy MLP and DCGAN-style convnets.

``build_models(arch, sample_shape, ...) -> (generator, critic)``:

* generator: ``forward(z: (B, z_dim)) -> (B, *sample_shape)`` float32, ``tanh`` output for
  images, linear output for 2-D points; has ``.z_dim`` and ``.sample_shape``.
* critic: ``forward(x: (B, *sample_shape)) -> (B // pac,)`` raw scores (no sigmoid), one per
  pack of ``pac`` consecutive samples (``pack``; PacGAN, Lin et al. 2018); pac = 1 (the
  default) is one score per sample. Its inner net is built for the packed sample shape
  ``packed_shape(sample_shape, pac)``.

The critic never uses batch normalisation: it mixes the samples of a batch, so the
critic is no longer a function of each input alone and the per-sample gradient norm the
penalty constrains is not the gradient of the function being scored (Gulrajani et al.
2017, section 4). Per-sample normalisation (LayerNorm / GroupNorm(1, C), or instance
norm) is allowed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

if TYPE_CHECKING:
    from fastgp.train.config import TrainConfig

ARCHS = ("mlp", "dcgan28", "dcgan32", "dcgan64")
CRITIC_NORMS = ("none", "layer", "instance")
GENERATOR_NORMS = ("batch", "none")

# Default width: gan_toy.py's DIM = 512 for the MLP, DCGAN's 64 for the convnets.
DEFAULT_WIDTH = {"mlp": 512, "dcgan28": 64, "dcgan32": 64, "dcgan64": 64}
_IMAGE_SIZE = {"dcgan28": 28, "dcgan32": 32, "dcgan64": 64}


class Generator(nn.Module):
    """``net`` maps (B, z_dim) noise to (B, prod(sample_shape)) or (B, *sample_shape)."""

    def __init__(self, net: nn.Module, z_dim: int, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.z_dim = z_dim
        self.sample_shape = tuple(sample_shape)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"generator expects noise `z` of shape (B, {self.z_dim}), got {tuple(z.shape)}"
            )
        return self.net(z).view(z.shape[0], *self.sample_shape)


def packed_shape(sample_shape: tuple[int, ...], pac: int) -> tuple[int, ...]:
    """The shape of one pack of ``pac`` samples: the first axis (features of a vector,
    channels of an image) ``pac`` times as long."""
    return (pac * sample_shape[0], *sample_shape[1:])


def pack(x: Tensor, pac: int) -> Tensor:
    """PacGAN packing: (B, C, *rest) -> (B // pac, pac * C, *rest), samples
    ``b * pac .. b * pac + pac - 1`` side by side along the first feature axis (a copy only
    where ``x`` is not contiguous).

    These are the groups fastgp's ``pac`` takes one alpha and one gradient norm over
    (consecutive samples), so a packed critic and ``gradient_penalty(..., pac=pac)`` agree.
    """
    if pac == 1:
        return x
    if x.shape[0] % pac:
        raise ValueError(f"a batch of {x.shape[0]} samples does not split into packs of {pac}")
    return x.reshape(x.shape[0] // pac, pac * x.shape[1], *x.shape[2:])


class Critic(nn.Module):
    """``net`` maps (B // pac, *packed_shape(sample_shape, pac)) to (B // pac, 1); the critic
    takes (B, *sample_shape), packs it (``pack``) and returns (B // pac,)."""

    def __init__(self, net: nn.Module, sample_shape: tuple[int, ...], pac: int = 1) -> None:
        super().__init__()
        self.net = net
        self.sample_shape = tuple(sample_shape)
        self.pac = pac

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"critic expects inputs of shape (B, {', '.join(map(str, self.sample_shape))}), "
                f"got {tuple(x.shape)}"
            )
        return self.net(pack(x, self.pac)).view(x.shape[0] // self.pac)

    def extra_repr(self) -> str:
        return f"pac={self.pac}" if self.pac > 1 else ""


class SampleScores(nn.Module):
    """A score per sample from a packed critic: each sample scored as the pack of ``pac``
    copies of itself, (B, *sample_shape) -> (B,). For pictures of the critic over the data
    space (the toy contour); training and the penalty use the packs themselves."""

    def __init__(self, critic: Critic) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, x: Tensor) -> Tensor:
        return self.critic(x.repeat_interleave(self.critic.pac, dim=0))


def sample_scores(critic: nn.Module) -> nn.Module:
    """``critic`` itself when it scores single samples (pac 1, or not a ``Critic``), else
    ``SampleScores(critic)``."""
    return SampleScores(critic) if getattr(critic, "pac", 1) > 1 else critic


class Reshape(nn.Module):
    """(B, *) -> (B, *shape)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Crop(nn.Module):
    """Keep the top-left ``size`` x ``size`` pixels (the 8x8 -> 7x7 step of the MNIST
    generator, as ``output[:, :, :7, :7]`` in gan_mnist.py)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : self.size, : self.size]

    def extra_repr(self) -> str:
        return f"size={self.size}"


# ---------------------------------------------------------------------------- parts


def _critic_norm_1d(norm: str, width: int) -> list[nn.Module]:
    if norm == "none":
        return []
    if norm == "layer":
        return [nn.LayerNorm(width)]
    raise ValueError(
        "critic_norm 'instance' needs feature maps; the 'mlp' critic supports 'none' or 'layer'"
    )


def _critic_norm_2d(norm: str, channels: int) -> list[nn.Module]:
    if norm == "none":
        return []
    if norm == "layer":  # over (C, H, W) of each sample
        return [nn.GroupNorm(1, channels)]
    return [nn.GroupNorm(channels, channels)]  # instance norm with an affine transform


def _generator_norm(norm: str, channels: int, spatial: bool) -> list[nn.Module]:
    if norm == "none":
        return []
    return [nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)]


def _mlp_pair(
    sample_shape: tuple[int, ...],
    z_dim: int,
    dim: int,
    critic_norm: str,
    generator_norm: str,
    critic_features: int,
    generator_layers: int = 3,
) -> tuple[nn.Module, nn.Module]:
    """gan_toy.py: 3 hidden ReLU layers of width ``dim`` in both nets (``generator_layers``
    in the generator), He-uniform hidden weights, Glorot-uniform output weights, zero
    biases. Images are flattened; their generator output goes through tanh. The critic
    reads ``critic_features`` inputs (a flattened pack)."""
    features = math.prod(sample_shape)
    g_layers: list[nn.Module] = []
    d_layers: list[nn.Module] = [nn.Flatten()]
    g_in, d_in = z_dim, critic_features
    for _ in range(3):
        g_layers += [nn.Linear(g_in, dim), *_generator_norm(generator_norm, dim, False)]
        g_layers.append(nn.ReLU())
        d_layers += [nn.Linear(d_in, dim), *_critic_norm_1d(critic_norm, dim), nn.ReLU()]
        g_in = d_in = dim
    for _ in range(generator_layers - 3):  # a deeper generator: sharper jumps between modes
        g_layers += [nn.Linear(dim, dim), *_generator_norm(generator_norm, dim, False), nn.ReLU()]
    g_layers.append(nn.Linear(dim, features))
    if len(sample_shape) > 1:
        g_layers.append(nn.Tanh())
    d_layers.append(nn.Linear(dim, 1))
    generator, critic = nn.Sequential(*g_layers), nn.Sequential(*d_layers)
    for net in (generator, critic):
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        for layer in linears[:-1]:
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(linears[-1].weight)
        nn.init.zeros_(linears[-1].bias)
    return generator, critic


def _dcgan28_pair(
    channels: int,
    z_dim: int,
    nf: int,
    critic_norm: str,
    generator_norm: str,
    critic_channels: int,
) -> tuple[nn.Module, nn.Module]:
    """gan_mnist.py (WGAN-GP paper): G: linear -> 4x4x4nf -> deconv 8x8 -> crop 7x7 ->
    14x14 -> 28x28 (5x5 kernels, ReLU, tanh out); D: three 5x5 stride-2 convs
    28 -> 14 -> 7 -> 4 with LeakyReLU 0.2, then linear.

    Departures from gan_mnist.py, for [-1, 1] data: tanh instead of sigmoid out; batch norm
    in G by default (``generator_norm``; the paper code only used it in its 'wgan' mode).
    G keeps the paper's ReLU (tutorial ports often use LeakyReLU; both train). D reads
    ``critic_channels`` channels (a pack).
    """

    def up(c_in: int, c_out: int) -> nn.ConvTranspose2d:
        return nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1)

    generator = nn.Sequential(
        nn.Linear(z_dim, 4 * 4 * 4 * nf),
        *_generator_norm(generator_norm, 4 * 4 * 4 * nf, False),
        nn.ReLU(),
        Reshape(4 * nf, 4, 4),
        up(4 * nf, 2 * nf),
        *_generator_norm(generator_norm, 2 * nf, True),
        nn.ReLU(),
        Crop(7),
        up(2 * nf, nf),
        *_generator_norm(generator_norm, nf, True),
        nn.ReLU(),
        up(nf, channels),
        nn.Tanh(),
    )
    critic = nn.Sequential(
        nn.Conv2d(critic_channels, nf, 5, stride=2, padding=2),
        nn.LeakyReLU(0.2),
        nn.Conv2d(nf, 2 * nf, 5, stride=2, padding=2),
        *_critic_norm_2d(critic_norm, 2 * nf),
        nn.LeakyReLU(0.2),
        nn.Conv2d(2 * nf, 4 * nf, 5, stride=2, padding=2),
        *_critic_norm_2d(critic_norm, 4 * nf),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4 * nf, 1),
    )
    return generator, critic


def _dcgan_pair(
    channels: int,
    image_size: int,
    z_dim: int,
    nf: int,
    critic_norm: str,
    generator_norm: str,
    critic_channels: int,
) -> tuple[nn.Module, nn.Module]:
    """DCGAN (Radford et al.) with 4x4 stride-2 (de)convolutions between 4x4 and
    ``image_size``: G: z -> 4x4 x (nf * 2^(L-1)) by a 4x4 transposed conv, then halving the
    width while doubling the size, ReLU (+ batch norm), tanh out; D: the mirror with
    LeakyReLU 0.2, no norm on the first layer, then a linear score on the 4x4 map; D reads
    ``critic_channels`` channels (a pack)."""
    levels = int(math.log2(image_size // 4))  # 3 for 32x32, 4 for 64x64
    widths = [nf * 2**i for i in range(levels)]  # nf, 2nf, 4nf(, 8nf)
    top = widths[-1]
    g_layers: list[nn.Module] = [
        Reshape(z_dim, 1, 1),
        nn.ConvTranspose2d(z_dim, top, 4, stride=1, padding=0),
        *_generator_norm(generator_norm, top, True),
        nn.ReLU(),
    ]
    for c_in, c_out in zip(widths[:0:-1], widths[-2::-1], strict=True):
        g_layers += [
            nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
            *_generator_norm(generator_norm, c_out, True),
            nn.ReLU(),
        ]
    g_layers += [nn.ConvTranspose2d(nf, channels, 4, stride=2, padding=1), nn.Tanh()]

    d_layers: list[nn.Module] = [
        nn.Conv2d(critic_channels, nf, 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
    ]
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
        d_layers += [
            nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
            *_critic_norm_2d(critic_norm, c_out),
            nn.LeakyReLU(0.2),
        ]
    d_layers += [nn.Flatten(), nn.Linear(top * 4 * 4, 1)]
    return nn.Sequential(*g_layers), nn.Sequential(*d_layers)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN init: conv / transposed-conv / linear weights N(0, 0.02), batch-norm scales
    N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Wrap every Conv2d and Linear weight of ``module`` with
    ``torch.nn.utils.parametrizations.spectral_norm`` (in place; returns ``module``)."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _spectral_norm(m)
    return module


# ---------------------------------------------------------------------------- entry


def default_arch(sample_shape: tuple[int, ...]) -> str:
    """The architecture that fits a sample shape: mlp for vectors, dcgan28/32/64 for square
    images of those sizes."""
    if len(sample_shape) == 1:
        return "mlp"
    if len(sample_shape) == 3 and sample_shape[1] == sample_shape[2]:
        for arch, size in _IMAGE_SIZE.items():
            if sample_shape[1] == size:
                return arch
    raise ValueError(
        f"no default architecture for samples of shape {tuple(sample_shape)}; images must be "
        "28x28, 32x32 or 64x64 (use --image-size) or pass --arch mlp"
    )


def _check_args(
    arch: str,
    sample_shape: tuple[int, ...],
    z_dim: int,
    nf: int,
    critic_norm: str,
    generator_norm: str,
    pac: int,
) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if not sample_shape or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sample_shape
    ):
        raise ValueError(f"`sample_shape` must be a tuple of positive ints, got {sample_shape!r}")
    for name, value in (("z_dim", z_dim), ("nf", nf), ("pac", pac)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if critic_norm == "batch":
        raise ValueError(
            "critic_norm='batch' is not allowed: batch norm makes each critic score depend on "
            "the other samples in the batch, so the per-sample gradient the penalty constrains "
            "is not the gradient of the critic (WGAN-GP, Gulrajani et al. 2017, sec. 4); use "
            "'layer' (per-sample LayerNorm / GroupNorm(1, C)), 'instance' or 'none'"
        )
    if critic_norm not in CRITIC_NORMS:
        raise ValueError(
            f"unknown critic_norm {critic_norm!r}; expected one of {', '.join(CRITIC_NORMS)}"
        )
    if generator_norm not in GENERATOR_NORMS:
        raise ValueError(
            f"unknown generator_norm {generator_norm!r}; expected one of "
            f"{', '.join(GENERATOR_NORMS)}"
        )
    if arch in _IMAGE_SIZE:
        size = _IMAGE_SIZE[arch]
        if len(sample_shape) != 3 or tuple(sample_shape[1:]) != (size, size):
            raise ValueError(
                f"arch {arch!r} needs images of shape (C, {size}, {size}), got samples of shape "
                f"{tuple(sample_shape)}; resize the data (--image-size {size}) or pick the arch "
                "that fits it"
            )


def build_models(
    arch: str,
    sample_shape: tuple[int, ...],
    z_dim: int = 128,
    nf: int | None = None,
    *,
    spectral_norm: bool = False,
    critic_norm: str = "none",
    generator_norm: str = "batch",
    pac: int = 1,
    generator_layers: int = 3,
) -> tuple[nn.Module, nn.Module]:
    """Build ``(generator, critic)`` for samples of ``sample_shape``.

    Args:
        arch: ``mlp`` (gan_toy.py's ReLU MLP, any sample shape, flattened), ``dcgan28``
            (gan_mnist.py's convnet, (C, 28, 28)), ``dcgan32`` / ``dcgan64`` (DCGAN,
            (C, 32, 32) / (C, 64, 64)).
        sample_shape: (2,) for toy points, (C, H, W) for images.
        z_dim: noise width (gan_toy.py itself used 2-D noise; gan_mnist.py 128).
        nf: width: the MLP's hidden size (default 512, gan_toy.py's DIM) or the convnets'
            base channel count (default 64).
        spectral_norm: wrap every critic Conv2d / Linear in spectral normalisation.
        critic_norm: ``none``, ``layer`` (LayerNorm for the MLP, GroupNorm(1, C) for
            convs) or ``instance`` (convs only). ``batch`` is rejected (see module doc).
        generator_norm: ``batch`` (BatchNorm after every hidden layer) or ``none``.
        pac: PacGAN packing: the critic scores packs of ``pac`` consecutive samples
            (``Critic``, ``pack``); its first layer takes ``pac`` times the features or
            channels. 1: one score per sample.
        generator_layers: hidden layers of the ``mlp`` generator (>= 3; the convnets have
            their fixed depth, so they take only 3).

    Returns:
        (generator, critic), both float32 on CPU in train mode.
    """
    sample_shape = tuple(sample_shape)
    width = DEFAULT_WIDTH.get(arch, 64) if nf is None else nf
    _check_args(arch, sample_shape, z_dim, width, critic_norm, generator_norm, pac)
    if isinstance(generator_layers, bool) or not isinstance(generator_layers, int):
        raise ValueError(f"`generator_layers` must be an int, got {generator_layers!r}")
    if generator_layers < 3 or (arch != "mlp" and generator_layers != 3):
        raise ValueError(
            f"`generator_layers` must be >= 3 for arch mlp and 3 for the convnets; got "
            f"{generator_layers} for arch {arch!r}"
        )
    norms = (critic_norm, generator_norm)
    critic_input = packed_shape(sample_shape, pac)  # what the critic's net reads per pack
    if arch == "mlp":
        g_net, d_net = _mlp_pair(
            sample_shape, z_dim, width, *norms, math.prod(critic_input), generator_layers
        )
    else:
        channels = sample_shape[0]
        if arch == "dcgan28":
            g_net, d_net = _dcgan28_pair(channels, z_dim, width, *norms, critic_input[0])
        else:
            size = _IMAGE_SIZE[arch]
            g_net, d_net = _dcgan_pair(channels, size, z_dim, width, *norms, critic_input[0])
        _dcgan_init(g_net)
        _dcgan_init(d_net)
    if spectral_norm:
        apply_spectral_norm(d_net)
    return Generator(g_net, z_dim, sample_shape), Critic(d_net, sample_shape, pac)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_networks(cfg: TrainConfig, sample_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """``(generator, critic)`` of a resolved config; the generator has width ``nf_g`` (taken
    from a pair built at that width when it differs from the critic's ``nf``), the critic
    scores packs of ``pac``."""
    pair = {
        "spectral_norm": cfg.spectral_norm,
        "critic_norm": cfg.critic_norm,
        "generator_norm": cfg.generator_norm,
        "pac": cfg.pac,
        "generator_layers": cfg.g_layers,
    }
    generator, critic = build_models(cfg.arch, sample_shape, cfg.z_dim, cfg.nf, **pair)
    if cfg.nf_g != cfg.nf:
        generator = build_models(cfg.arch, sample_shape, cfg.z_dim, cfg.nf_g, **pair)[0]
    return generator, critic
