"""pix2pix networks for PET -> pseudo-T1w MR (Isola et al. 2017; Choi & Lee 2018).

Slices are axial, 192x256 in Choi & Lee, with intensities scaled to [-1, 1]. The generator is
the pix2pix "unet_256" U-Net; the discriminator is the 70x70 PatchGAN, conditioned on the PET
by channel concatenation. For 2.5D input, give ``in_channels=k`` (k adjacent PET slices) to the
generator and ``in_channels=k + 1`` to the discriminator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def _features(base_features: int, level: int) -> int:
    # pix2pix doubles the width per level up to 8x base (ngf, 2ngf, 4ngf, 8ngf, 8ngf, ...).
    return base_features * min(2**level, 8)


class DownBlock(nn.Module):
    """Encoder step: [LeakyReLU 0.2] -> Conv 4x4 stride 2 -> [BatchNorm] (pix2pix order)."""

    def __init__(self, in_channels: int, out_channels: int, *, activation: bool, norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        if activation:
            layers.append(nn.LeakyReLU(0.2))
        layers.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpBlock(nn.Module):
    """Decoder step: ReLU -> ConvTranspose 4x4 stride 2 -> BatchNorm [-> Dropout], or Tanh
    instead of BatchNorm for the outermost block."""

    def __init__(self, in_channels: int, out_channels: int, *, outermost: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(),
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1,
                               bias=outermost),
        ]
        if outermost:
            layers.append(nn.Tanh())
        else:
            layers.append(nn.BatchNorm2d(out_channels))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNetGenerator2D(nn.Module):
    """pix2pix U-Net generator ("unet_256" with the defaults).

    ``depth`` stride-2 levels halve H and W ``depth`` times, so inputs whose H or W is not a
    multiple of ``2**depth`` are padded internally with ``pad_value`` (centred) and the output is
    cropped back to the input size. With the default ``depth=8`` a 192x256 slice is padded to
    256x256, i.e. exactly pix2pix unet_256; ``depth=6`` fits 192x256 without padding.
    ``pad_value=-1`` is the background of [-1, 1]-scaled images. Dropout sits in the three
    decoder blocks just outside the innermost one, as in pix2pix (fewer when ``depth < 7``).
    The output passes through Tanh, so it lies in [-1, 1].
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_features: int = 64,
                 depth: int = 8, dropout: float = 0.5, pad_value: float = -1.0):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        if min(in_channels, out_channels, base_features) < 1:
            raise ValueError("in_channels, out_channels and base_features must be positive")
        self.config = {"in_channels": in_channels, "out_channels": out_channels,
                       "base_features": base_features, "depth": depth, "dropout": dropout,
                       "pad_value": pad_value}
        self.depth = depth
        self.pad_value = pad_value
        feats = [_features(base_features, level) for level in range(depth)]
        innermost = depth - 1
        self.down = nn.ModuleList(
            [DownBlock(in_channels, feats[0], activation=False, norm=False)]
            + [DownBlock(feats[level - 1], feats[level], activation=True,
                         norm=level != innermost)  # pix2pix: no norm at the bottleneck
               for level in range(1, depth)]
        )
        dropout_levels = range(max(1, depth - 4), depth - 1)
        # up[level] undoes down[level]; all but the innermost take [skip, upsampled] channels.
        self.up = nn.ModuleList(
            [UpBlock(2 * feats[0], out_channels, outermost=True)]
            + [UpBlock(2 * feats[level], feats[level - 1],
                       dropout=dropout if level in dropout_levels else 0.0)
               for level in range(1, innermost)]
            + [UpBlock(feats[innermost], feats[innermost - 1])]
        )

    def forward(self, pet: torch.Tensor) -> torch.Tensor:
        height, width = pet.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        x = pet
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                      value=self.pad_value)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for level in range(self.depth - 2, -1, -1):
            x = self.up[level](torch.cat([skips[level], x], dim=1))
        if pad_h or pad_w:
            x = x[..., pad_h // 2:pad_h // 2 + height, pad_w // 2:pad_w // 2 + width]
        return x


class PatchDiscriminator2D(nn.Module):
    """pix2pix PatchGAN ("basic", 70x70 receptive field with ``n_layers=3``).

    Input is the PET channels concatenated with a real or generated MR (see
    ``discriminator_input``); output is a map of real/fake logits, one per patch. For HxW input
    with ``n_layers=3`` the map is (H/8 - 2) x (W/8 - 2), e.g. 22x30 for 192x256.
    """

    def __init__(self, in_channels: int = 2, base_features: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        self.config = {"in_channels": in_channels, "base_features": base_features,
                       "n_layers": n_layers}
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_features, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        for layer in range(1, n_layers + 1):
            stride = 2 if layer < n_layers else 1  # the last widening conv keeps the size
            layers += [
                nn.Conv2d(_features(base_features, layer - 1), _features(base_features, layer),
                          4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(_features(base_features, layer)),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(_features(base_features, n_layers), 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, pet_and_mr: torch.Tensor) -> torch.Tensor:
        return self.model(pet_and_mr)


NETS_REGISTRY = {"UNetGenerator2D": UNetGenerator2D, "PatchDiscriminator2D": PatchDiscriminator2D}


def init_weights(net: nn.Module, init_gain: float = 0.02) -> nn.Module:
    """pix2pix "normal" init: conv weights ~ N(0, gain), BatchNorm weights ~ N(1, gain), biases 0."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, init_gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, init_gain)
            nn.init.zeros_(module.bias)
    return net


def define_G(init_gain: float = 0.02, **kwargs) -> UNetGenerator2D:
    """A freshly initialised ``UNetGenerator2D(**kwargs)``."""
    return init_weights(UNetGenerator2D(**kwargs), init_gain)


def define_D(init_gain: float = 0.02, **kwargs) -> PatchDiscriminator2D:
    """A freshly initialised ``PatchDiscriminator2D(**kwargs)``."""
    return init_weights(PatchDiscriminator2D(**kwargs), init_gain)


def discriminator_input(pet: torch.Tensor, mr: torch.Tensor) -> torch.Tensor:
    """Conditional GAN input: PET channels then the (real or generated) MR channel."""
    return torch.cat([pet, mr], dim=1)


class GeneratorLossTerms(NamedTuple):
    total: torch.Tensor
    adversarial: torch.Tensor
    l1: torch.Tensor


class Pix2PixLoss:
    """pix2pix objective, Isola et al. 2017 eq. 4: G* = arg min_G max_D L_cGAN(G, D) + lambda L_L1(G).

    The adversarial term is the non-saturating BCE-with-logits ("vanilla" GAN mode).
    """

    def __init__(self, lambda_l1: float = 100.0):
        self.lambda_l1 = lambda_l1

    def generator(self, fake_logits: torch.Tensor, pseudo_t1w: torch.Tensor,
                  real_t1w: torch.Tensor) -> GeneratorLossTerms:
        adversarial = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
        l1 = F.l1_loss(pseudo_t1w, real_t1w)
        return GeneratorLossTerms(adversarial + self.lambda_l1 * l1, adversarial, l1)

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        # Halved so D learns more slowly than G (pix2pix practice).
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return 0.5 * (real + fake)


def make_optimizers(generator: nn.Module, discriminator: nn.Module, lr: float = 2e-4,
                    beta1: float = 0.5) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for G and D with the pix2pix settings (lr 2e-4, betas (0.5, 0.999))."""
    betas = (beta1, 0.999)
    return (torch.optim.Adam(generator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas))


def train_step(generator: nn.Module, discriminator: nn.Module,
               optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
               loss: Pix2PixLoss, pet: torch.Tensor, real_t1w: torch.Tensor) -> dict[str, float]:
    """One pix2pix update: D on (PET, real) vs (PET, detached fake), then G. Returns the terms."""
    opt_g, opt_d = optimizers
    pseudo_t1w = generator(pet)

    opt_d.zero_grad(set_to_none=True)
    loss_d = loss.discriminator(discriminator(discriminator_input(pet, real_t1w)),
                                discriminator(discriminator_input(pet, pseudo_t1w.detach())))
    loss_d.backward()
    opt_d.step()

    opt_g.zero_grad(set_to_none=True)
    terms = loss.generator(discriminator(discriminator_input(pet, pseudo_t1w)), pseudo_t1w,
                           real_t1w)
    terms.total.backward()
    opt_g.step()
    return {"d": loss_d.item(), "g": terms.total.item(), "g_adversarial": terms.adversarial.item(),
            "g_l1": terms.l1.item()}
