"""fastgp.train.models: shapes for every architecture and option, parameter counts against
the reference architectures, the per-sample property the penalty relies on, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastgp.train.models import ARCHS, build_models, count_parameters, default_arch

SHAPES = {
    "mlp": (2,),
    "dcgan28": (1, 28, 28),
    "dcgan32": (3, 32, 32),
    "dcgan64": (3, 64, 64),
}


def small(arch: str) -> int:
    return 32 if arch == "mlp" else 8


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"generator_norm": "none", "critic_norm": "layer", "spectral_norm": True},
    ],
    ids=["default", "sn-layer"],
)
def test_shapes_and_double_backward(arch, options):
    torch.manual_seed(0)
    shape = SHAPES[arch]
    generator, critic = build_models(arch, shape, z_dim=16, nf=small(arch), **options)
    assert generator.z_dim == 16
    x = generator(torch.randn(3, 16))
    assert x.shape == (3, *shape) and x.dtype == torch.float32
    if len(shape) == 3:
        assert x.abs().max() <= 1  # tanh output
    scores = critic(x)
    assert scores.shape == (3,)
    # The WGAN-GP double backward reaches every critic parameter.
    x_hat = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    grad.flatten(1).norm(dim=1).sub(1).pow(2).mean().backward()
    # Biases of a piecewise-linear (Leaky)ReLU net do not move its input gradient (zero
    # second derivative), so only the weights must receive a nonzero penalty gradient.
    weights = {n: p for n, p in critic.named_parameters() if p.dim() >= 2}
    assert weights
    missing = [n for n, p in weights.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("arch", ARCHS)
def test_critic_is_per_sample(arch):
    """Score of a sample does not depend on the rest of the batch (no batch statistics)."""
    torch.manual_seed(1)
    _, critic = build_models(arch, SHAPES[arch], nf=small(arch), critic_norm="layer")
    x = torch.randn(4, *SHAPES[arch])
    together = critic(x)
    alone = torch.cat([critic(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_parameter_counts_match_reference_architectures():
    # gan_toy.py with DIM=512 and 2-D noise: 3 hidden layers of 512.
    g, d = build_models("mlp", (2,), z_dim=2, generator_norm="none")
    hidden = 2 * 512 + 512 + 2 * (512 * 512 + 512)
    assert count_parameters(g) == hidden + 512 * 2 + 2
    assert count_parameters(d) == hidden + 512 + 1
    # gan_mnist.py critic with DIM=64: 5x5 convs 1->64->128->256, linear 4096->1.
    _, d = build_models("dcgan28", (1, 28, 28), nf=64)
    convs = (25 * 1 * 64 + 64) + (25 * 64 * 128 + 128) + (25 * 128 * 256 + 256)
    assert count_parameters(d) == convs + 4 * 4 * 256 + 1
    # gan_mnist.py generator (without its batch norms): linear 128->4096, deconvs 256->128->64->1.
    g, _ = build_models("dcgan28", (1, 28, 28), nf=64, generator_norm="none")
    deconvs = (25 * 256 * 128 + 128) + (25 * 128 * 64 + 64) + (25 * 64 * 1 + 1)
    assert count_parameters(g) == 128 * 4096 + 4096 + deconvs


def test_defaults_widths_and_init():
    g, d = build_models("mlp", (2,))
    assert g.net[0].out_features == 512  # gan_toy.py's DIM
    g, d = build_models("dcgan32", (3, 32, 32))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 64
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())


def test_spectral_norm_bounds_the_critic_layers():
    torch.manual_seed(2)
    _, critic = build_models("dcgan32", (3, 32, 32), nf=4, spectral_norm=True)
    critic.train()
    for _ in range(15):  # power iterations converge while the critic runs
        critic(torch.randn(2, 3, 32, 32))
    linears = [m for m in critic.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert linears and all(hasattr(m, "parametrizations") for m in linears)
    last = linears[-1]
    sigma = torch.linalg.matrix_norm(last.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_norm_options():
    _, d = build_models("dcgan64", (3, 64, 64), nf=4, critic_norm="instance")
    norms = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == m.num_channels for m in norms)
    _, d = build_models("mlp", (2,), nf=8, critic_norm="layer")
    assert sum(isinstance(m, nn.LayerNorm) for m in d.modules()) == 3
    g, _ = build_models("mlp", (2,), nf=8, generator_norm="none")
    assert not any(isinstance(m, nn.BatchNorm1d) for m in g.modules())


def test_batch_norm_in_critic_is_refused_with_reason():
    with pytest.raises(ValueError, match="per-sample gradient") as info:
        build_models("dcgan32", (3, 32, 32), critic_norm="batch")
    assert "layer" in str(info.value)
    with pytest.raises(ValueError, match="'mlp' critic supports"):
        build_models("mlp", (2,), critic_norm="instance")


def test_size_mismatch_and_bad_arguments():
    with pytest.raises(ValueError, match=r"dcgan64.*\(C, 64, 64\).*\(1, 28, 28\)"):
        build_models("dcgan64", (1, 28, 28))
    with pytest.raises(ValueError, match="dcgan28"):
        build_models("dcgan28", (2,))
    with pytest.raises(ValueError, match="unknown arch 'resnet'"):
        build_models("resnet", (3, 32, 32))
    with pytest.raises(ValueError, match="generator_norm"):
        build_models("mlp", (2,), generator_norm="layer")
    with pytest.raises(ValueError, match="z_dim"):
        build_models("mlp", (2,), z_dim=0)
    g, d = build_models("mlp", (2,), nf=8)
    with pytest.raises(ValueError, match=r"noise `z` of shape \(B, 128\)"):
        g(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"critic expects inputs of shape \(B, 2\)"):
        d(torch.randn(2, 3))


def test_default_arch():
    assert default_arch((2,)) == "mlp"
    assert default_arch((1, 28, 28)) == "dcgan28"
    assert default_arch((3, 64, 64)) == "dcgan64"
    with pytest.raises(ValueError, match="28x28, 32x32 or 64x64"):
        default_arch((3, 48, 48))


def test_generator_layers_deepen_only_the_mlp_generator():
    torch.manual_seed(0)
    plain = build_models("mlp", (2,), 2, 16, generator_norm="none")
    torch.manual_seed(0)
    three = build_models("mlp", (2,), 2, 16, generator_norm="none", generator_layers=3)
    for a, b in zip(plain, three, strict=True):  # 3 is the default, weight for weight
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(p, q), name
    torch.manual_seed(0)
    gen, critic = build_models("mlp", (2,), 2, 16, generator_norm="none", generator_layers=5)
    assert sum(isinstance(m, nn.Linear) for m in gen.modules()) == 6  # 5 hidden + output
    assert sum(isinstance(m, nn.Linear) for m in critic.modules()) == 4  # unchanged
    assert gen(torch.randn(7, 2)).shape == (7, 2)
    with pytest.raises(ValueError, match="generator_layers"):
        build_models("mlp", (2,), 2, 16, generator_layers=2)
    with pytest.raises(ValueError, match="3 for the convnets"):
        build_models("dcgan28", (1, 28, 28), 8, 4, generator_layers=4)
