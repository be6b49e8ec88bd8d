"""Sketcher-Refiner GANs: [11C]PIB DVR from MTR and DTI (Wei et al., Med Image Anal 2019).

Two conditional GANs run in sequence (Wei §2.1.2, Fig. 2). The Sketcher maps the MR channels
I_M plus a noise channel z to a first DVR "sketch"; the Refiner maps I_M plus the sketch to the
final DVR, with a loss that weighs lesion, normal-appearing white matter (NAWM) and the rest
equally whatever their sizes (eq. 5). Both generators are the same 3D U-Net (§2.4, Fig. 3A);
both discriminators are a 3D patch discriminator over non-overlapping patches (Fig. 3B).

Every "in_channels" below counts the MR channels only (MTR, FA, RD, AD in Wei 2019, §3.7): the
Sketcher adds its noise channel, the Refiner the sketch, and the discriminator the DVR.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthquant.nets.pix2pix import GeneratorLossTerms, Pix2PixLoss

#: The MR channel order of Wei 2019 (§3.1 a): MTR, then the three DTI measures.
MR_CHANNELS = ("MTR", "FA", "RD", "AD")
#: Initial learning rates, Wei 2019 §3.1 ("ADAM ... 10^-4, 5x10^-5 ... for the Sketcher and the
#: Refiner respectively"); each stage's discriminator uses its generator's rate.
SKETCHER_LR = 1e-4
REFINER_LR = 5e-5
#: Wei 2019 gives no Adam betas (it used Keras, whose default beta1 is 0.9); we use pix2pix's
#: (0.5, 0.999) (Isola et al. 2017, §3.3), the cGAN recipe Wei's eq. 6 follows (DCGAN's choice
#: for stable GAN training).
ADAM_BETAS = (0.5, 0.999)
#: λS and λR (eq. 6) are not given in Wei 2019 (§2.2 names them, §3.1 omits them); we take
#: pix2pix's λ = 100 (Isola et al. 2017, used throughout their §4), on which eq. 6 is modelled.
LAMBDA_SKETCHER = 100.0
LAMBDA_REFINER = 100.0
#: Patch edge of the 3D patch discriminator. Wei 2019 leaves l x w x h to Fig. 3B, but §2.4
#: says overlapping patches would number 1.2 million on the 128x160x128 inputs: (129-p)^2
#: (161-p) = 1.2e6 gives p = 32 (97^2 x 129 = 1.21e6). So 32^3 patches, 80 per volume.
PATCH_SIZE = 32
#: LeakyReLU slope, Wei 2019 §2.4 ("0.2 as slope coefficient").
NEGATIVE_SLOPE = 0.2


def _conv_unit(in_channels: int, out_channels: int, *, stride: int = 1,
               dropout: float = 0.0) -> nn.Sequential:
    """Conv 3x3x3 -> LeakyReLU 0.2 -> BatchNorm [-> Dropout].

    Wei 2019 §2.4: "Batch normalization and dropout are applied after each LeakyReLU layer",
    so the normalisation follows the activation here (the reverse of pix2pix's order).
    """
    layers: list[nn.Module] = [
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.LeakyReLU(NEGATIVE_SLOPE),
        nn.BatchNorm3d(out_channels),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _up_unit(in_channels: int, out_channels: int, *, dropout: float) -> nn.Sequential:
    """Transposed conv 3x3x3 stride 2 (exactly doubles the size) -> LeakyReLU -> BN [-> Dropout]."""
    layers: list[nn.Module] = [
        nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
        nn.LeakyReLU(NEGATIVE_SLOPE),
        nn.BatchNorm3d(out_channels),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def pad_to_multiple(volume: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the last three axes (centred, edge values repeated) up to multiples of ``multiple``.

    Returns the padded tensor and the slices that crop it back. Edge replication rather than
    zeros: z-scored MR background is not 0 (Wei §3.1 normalises by the mean and std).
    """
    sizes = volume.shape[-3:]
    pads = [-size % multiple for size in sizes]
    crop = tuple(slice(pad // 2, pad // 2 + size) for pad, size in zip(pads, sizes))
    if not any(pads):
        return volume, crop
    # F.pad lists the last axis first.
    flat = [amount for pad in reversed(pads) for amount in (pad // 2, pad - pad // 2)]
    return F.pad(volume, flat, mode="replicate"), crop


class UNet3D(nn.Module):
    """The Sketcher's and Refiner's generator (Wei 2019 §2.4, Fig. 3A).

    Each of ``levels`` encoder levels is two 3x3x3 convolutions then a stride-2 3x3x3
    convolution; widths double per level from ``base_features`` (32, 64, 128, then 256 at the
    bridge for the defaults). Two convolutions bridge to the decoder, whose levels are a
    stride-2 transposed convolution, concatenation with the encoder output taken before the
    downsampling (the skip), and two convolutions. A final 1x1x1 convolution is linear, since
    z-scored DVR is signed (Wei §3.2 replaces sigmoid because "our output is not in [0,1]").

    Dropout (rate ``dropout``, 50% in Wei §2.4): Wei writes that dropout follows every
    LeakyReLU; pix2pix (Isola 2017, §6.1.1) uses it only in the decoder blocks next to the
    bottleneck, one per upsampling block, and with three levels that is every decoder level. We
    follow pix2pix by default (after each transposed convolution); ``dropout_everywhere=True``
    applies it after every LeakyReLU, as Wei's text reads.

    Volumes whose sides are not multiples of ``2**levels`` are padded internally and cropped
    back, so any size goes in and the same size comes out.
    """

    def __init__(self, network_in_channels: int, out_channels: int = 1, base_features: int = 32,
                 levels: int = 3, dropout: float = 0.5, dropout_everywhere: bool = False):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        if min(network_in_channels, out_channels, base_features) < 1:
            raise ValueError("channel counts and base_features must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.levels = levels
        self.size_multiple = 2**levels
        widths = [base_features * 2**level for level in range(levels + 1)]
        everywhere = dropout if dropout_everywhere else 0.0
        self.encoder = nn.ModuleList()
        self.downsample = nn.ModuleList()
        channels = network_in_channels
        for level in range(levels):
            self.encoder.append(nn.Sequential(
                _conv_unit(channels, widths[level], dropout=everywhere),
                _conv_unit(widths[level], widths[level], dropout=everywhere)))
            self.downsample.append(_conv_unit(widths[level], widths[level], stride=2,
                                              dropout=everywhere))
            channels = widths[level]
        self.bridge = nn.Sequential(_conv_unit(widths[levels - 1], widths[levels], dropout=everywhere),
                                    _conv_unit(widths[levels], widths[levels], dropout=everywhere))
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(levels):  # index = level; run from the deepest
            self.upsample.append(_up_unit(widths[level + 1], widths[level], dropout=dropout))
            self.decoder.append(nn.Sequential(
                _conv_unit(2 * widths[level], widths[level], dropout=everywhere),
                _conv_unit(widths[level], widths[level], dropout=everywhere)))
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        self.receptive_radius = unet_receptive_radius(levels)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x, crop = pad_to_multiple(x, self.size_multiple)
        skips = []
        for encode, down in zip(self.encoder, self.downsample):
            x = encode(x)
            skips.append(x)
            x = down(x)
        x = self.bridge(x)
        for level in range(self.levels - 1, -1, -1):
            x = self.upsample[level](x)
            x = self.decoder[level](torch.cat([skips[level], x], dim=1))
        return self.head(x)[(..., *crop)]


def unet_receptive_radius(levels: int) -> int:
    """An upper bound, in voxels, on how far an output voxel of :class:`UNet3D` sees.

    Each 3x3x3 convolution at scale s (voxels per feature) adds s; the stride-2 convolution
    adds s at its input scale; a transposed one adds its coarse scale. Two output voxels whose
    neighbourhoods of this radius match give the same value (used by :func:`predict_volume`).
    """
    radius, scale = 0, 1
    for _ in range(levels):
        radius += 2 * scale + scale  # two convolutions, then the strided one
        scale *= 2
    radius += 2 * scale  # bridge
    for _ in range(levels):
        radius += scale  # transposed convolution
        scale //= 2
        radius += 2 * scale
    return radius


class Sketcher3D(UNet3D):
    """Wei 2019 Sketcher generator G_S(I_M, z): MR channels plus ``noise_channels`` of z.

    z ~ N(0, 1) per voxel while training (eq. 2); in eval mode z = 0, the prior's mean, so that
    inference is deterministic (DESIGN: two runs give the same tables). Pass ``noise`` to choose.
    """

    def __init__(self, in_channels: int = 4, noise_channels: int = 1, out_channels: int = 1,
                 base_features: int = 32, levels: int = 3, dropout: float = 0.5,
                 dropout_everywhere: bool = False):
        if noise_channels < 0:
            raise ValueError(f"noise_channels must be non-negative, got {noise_channels}")
        super().__init__(in_channels + noise_channels, out_channels, base_features, levels,
                         dropout, dropout_everywhere)
        self.in_channels = in_channels
        self.noise_channels = noise_channels
        self.config = {"in_channels": in_channels, "noise_channels": noise_channels,
                       "out_channels": out_channels, "base_features": base_features,
                       "levels": levels, "dropout": dropout,
                       "dropout_everywhere": dropout_everywhere}

    def forward(self, mr: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.noise_channels:
            if noise is None:
                shape = (mr.shape[0], self.noise_channels, *mr.shape[2:])
                noise = (torch.randn(shape, device=mr.device, dtype=mr.dtype) if self.training
                         else torch.zeros(shape, device=mr.device, dtype=mr.dtype))
            mr = torch.cat([mr, noise], dim=1)
        return self._forward(mr)


class Refiner3D(UNet3D):
    """Wei 2019 Refiner generator G_R(I_M, I_S): MR channels plus the sketch, no noise (§3.1).

    ``residual=True`` (ours) makes the output the sketch plus the U-Net's correction,
    G_R(I_M, I_S) = I_S + U(I_M, I_S), with the U-Net's linear head started at zero
    (:func:`define_refiner`). The Refiner then starts exactly at the Sketcher's output and its
    weighted L1 (eq. 5) only has to learn where the sketch is wrong, mostly in lesions; Wei's
    Refiner, trained from scratch on two GPUs, has to relearn the whole map first, which our CPU
    budgets do not allow (benchmarks/myelin_validation.py). ``residual=False`` is Wei's form.
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 1, base_features: int = 32,
                 levels: int = 3, dropout: float = 0.5, dropout_everywhere: bool = False,
                 residual: bool = False):
        super().__init__(in_channels + out_channels, out_channels, base_features, levels,
                         dropout, dropout_everywhere)
        self.in_channels = in_channels
        self.residual = bool(residual)
        self.config = {"in_channels": in_channels, "out_channels": out_channels,
                       "base_features": base_features, "levels": levels, "dropout": dropout,
                       "dropout_everywhere": dropout_everywhere, "residual": self.residual}

    def forward(self, mr: torch.Tensor, sketch: torch.Tensor) -> torch.Tensor:
        correction = self._forward(torch.cat([mr, sketch], dim=1))
        return sketch + correction if self.residual else correction


class SketcherRefiner3D(nn.Module):
    """The whole predictor, MR -> DVR: the Refiner applied to the MR and the Sketcher's output.

    One checkpoint (``dvr_from_mri`` in DESIGN) holds both; its kwargs are the two configs.
    """

    def __init__(self, sketcher: dict, refiner: dict):
        super().__init__()
        self.sketcher = Sketcher3D(**sketcher)
        self.refiner = Refiner3D(**refiner)
        if self.sketcher.in_channels != self.refiner.in_channels:
            raise ValueError("Sketcher and Refiner must take the same MR channels")
        self.config = {"sketcher": dict(self.sketcher.config), "refiner": dict(self.refiner.config)}
        self.size_multiple = math.lcm(self.sketcher.size_multiple, self.refiner.size_multiple)
        self.receptive_radius = self.sketcher.receptive_radius + self.refiner.receptive_radius

    @classmethod
    def from_models(cls, sketcher: Sketcher3D, refiner: Refiner3D) -> SketcherRefiner3D:
        """Combine two trained generators (their weights are copied)."""
        combined = cls(sketcher.config, refiner.config)
        combined.sketcher.load_state_dict(sketcher.state_dict())
        combined.refiner.load_state_dict(refiner.state_dict())
        return combined

    def forward(self, mr: torch.Tensor) -> torch.Tensor:
        return self.refiner(mr, self.sketcher(mr))


class PatchDiscriminator3D(nn.Module):
    """Wei 2019 3D patch discriminator (§2.4, Fig. 3B), conditioned on the MR channels.

    The input (MR channels then one DVR channel) is cut into non-overlapping ``patch_size``^3
    patches (stride = kernel = patch), and each patch is classified on its own by a small CNN:
    ``n_layers`` of [3x3x3 stride-1 convolution -> BatchNorm -> LeakyReLU 0.2 -> 2x max-pool],
    widths doubling from ``base_features``, then a fully connected layer. Wei's two-node softmax
    is replaced by one logit (softmax over two logits depends only on their difference, so it is
    the same classifier), for use with BCE-with-logits. Output: (B, 1, D/p, H/p, W/p) logits.
    Sides that are not multiples of the patch are padded (centred, edge values repeated).
    """

    def __init__(self, in_channels: int = 4, patch_size: int = PATCH_SIZE,
                 base_features: int = 32, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or patch_size % 2**n_layers:
            raise ValueError(f"patch_size ({patch_size}) must be a multiple of 2**n_layers "
                             f"({2**n_layers}), with n_layers >= 1")
        self.config = {"in_channels": in_channels, "patch_size": patch_size,
                       "base_features": base_features, "n_layers": n_layers}
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        channels = in_channels + 1
        for layer in range(n_layers):
            width = base_features * 2**layer
            layers += [nn.Conv3d(channels, width, 3, padding=1), nn.BatchNorm3d(width),
                       nn.LeakyReLU(NEGATIVE_SLOPE), nn.MaxPool3d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classify = nn.Linear(channels * (patch_size // 2**n_layers) ** 3, 1)

    def forward(self, mr_and_dvr: torch.Tensor) -> torch.Tensor:
        x, _ = pad_to_multiple(mr_and_dvr, self.patch_size)
        batch, channels = x.shape[:2]
        p = self.patch_size
        grid = [size // p for size in x.shape[2:]]
        # (B, C, nD p, nH p, nW p) -> (B nD nH nW, C, p, p, p): each patch is one sample.
        patches = (x.reshape(batch, channels, grid[0], p, grid[1], p, grid[2], p)
                   .permute(0, 2, 4, 6, 1, 3, 5, 7)
                   .reshape(-1, channels, p, p, p))
        logits = self.classify(self.features(patches).flatten(1))
        return logits.reshape(batch, *grid).unsqueeze(1)


MYELIN_NETS_REGISTRY = {
    "Sketcher3D": Sketcher3D,
    "Refiner3D": Refiner3D,
    "SketcherRefiner3D": SketcherRefiner3D,
    "PatchDiscriminator3D": PatchDiscriminator3D,
}


def init_weights_3d(net: nn.Module) -> nn.Module:
    """Keras layer defaults: Glorot-uniform weights, zero biases, BatchNorm scale 1 and shift 0.

    Wei 2019 §3.1 names Keras and no initialiser, so its defaults are the paper's. (pix2pix's
    N(0, 0.02) would leave the linear 1x1x1 head, fed by unit-variance BatchNorm features,
    hundreds of Adam steps away from producing DVR of unit scale.)
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def define_sketcher(**kwargs) -> Sketcher3D:
    """A freshly initialised ``Sketcher3D(**kwargs)``."""
    return init_weights_3d(Sketcher3D(**kwargs))


def define_refiner(**kwargs) -> Refiner3D:
    """A freshly initialised ``Refiner3D(**kwargs)``; a residual one starts as the identity on
    the sketch (zero head), so its first output is the Sketcher's."""
    refiner = init_weights_3d(Refiner3D(**kwargs))
    if refiner.residual:
        nn.init.zeros_(refiner.head.weight)
        nn.init.zeros_(refiner.head.bias)
    return refiner


def define_patch_discriminator_3d(**kwargs) -> PatchDiscriminator3D:
    """A freshly initialised ``PatchDiscriminator3D(**kwargs)``."""
    return init_weights_3d(PatchDiscriminator3D(**kwargs))


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------- losses

def region_weights(lesion_mask: np.ndarray, nawm_mask: np.ndarray,
                   brain_mask: np.ndarray | None = None, lesion_weight: float = 1.0) -> np.ndarray:
    """Per-voxel weights of Wei 2019 eq. 5 for one subject: 1/N_Les, 1/N_NAWM, 1/N_other.

    Lesion wins where the masks overlap (NAWM is white matter outside visible lesions, Wei
    §3.1 a). "Other" is every remaining voxel of the image, or of ``brain_mask`` when given
    (voxels outside it then weigh 0). Each non-empty class sums to 1, so lesion, NAWM and the
    rest count equally however small the lesions are; an empty class (a healthy control has no
    lesion) simply drops out. ``lesion_weight`` (ours; 1 is eq. 5) makes the lesion class sum
    to that instead.
    """
    lesion = np.asarray(lesion_mask) > 0
    if np.shape(nawm_mask) != lesion.shape:
        raise ValueError(f"lesion {lesion.shape} and NAWM {np.shape(nawm_mask)} masks differ")
    nawm = (np.asarray(nawm_mask) > 0) & ~lesion
    inside = np.ones_like(lesion) if brain_mask is None else np.asarray(brain_mask) > 0
    other = inside & ~lesion & ~nawm
    weights = np.zeros(lesion.shape, dtype=np.float32)
    for region, total in ((lesion, lesion_weight), (nawm, 1.0), (other, 1.0)):
        count = int(region.sum())
        if count:
            weights[region] = total / count
    return weights


def weighted_l1(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Wei 2019 eq. 5: (1/N) Σ_subjects Σ_voxels w |target - pred|, weights from
    :func:`region_weights`, i.e. the sum of the lesion, NAWM and other mean absolute errors,
    averaged over the N subjects of the batch (axis 0).

    Eq. 5 also divides by M, the voxels per image: a constant (2.6 million at 128x160x128) that
    only rescales λR, so it is left out and λR keeps the scale of pix2pix's λ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    weighted = (weights * (target - pred).abs()).expand_as(pred)
    return weighted.reshape(pred.shape[0], -1).sum(dim=1).mean()


def _generator_terms(fake_logits: torch.Tensor, reconstruction: torch.Tensor,
                     lambda_l1: float) -> GeneratorLossTerms:
    adversarial = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return GeneratorLossTerms(adversarial + lambda_l1 * reconstruction, adversarial, reconstruction)


def _discriminator_input(mr: torch.Tensor, dvr: torch.Tensor) -> torch.Tensor:
    # Eq. 2-3: both discriminators judge (I_M, I_P) pairs; the Refiner's does not see the sketch.
    return torch.cat([mr, dvr], dim=1)


def make_sketcher_optimizers(sketcher: nn.Module, discriminator: nn.Module,
                             lr: float = SKETCHER_LR, betas: tuple[float, float] = ADAM_BETAS):
    """Adam for G_S and D_S at Wei's Sketcher rate (1e-4, §3.1)."""
    return (torch.optim.Adam(sketcher.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas))


def make_refiner_optimizers(refiner: nn.Module, discriminator: nn.Module,
                            lr: float = REFINER_LR, betas: tuple[float, float] = ADAM_BETAS):
    """Adam for G_R and D_R at Wei's Refiner rate (5e-5, §3.1)."""
    return make_sketcher_optimizers(refiner, discriminator, lr, betas)


def _adversarial_step(generator_output: torch.Tensor, discriminator: nn.Module,
                      optimizers, mr: torch.Tensor, dvr: torch.Tensor,
                      reconstruction: Callable[[torch.Tensor], torch.Tensor],
                      lambda_l1: float) -> dict[str, float]:
    """D on (MR, real DVR) vs (MR, detached fake), then G: adversarial + λ·reconstruction."""
    opt_g, opt_d = optimizers
    # Wei §2.4: the patch discriminator's loss sums the cross-entropies of its patches; we
    # average them (pix2pix), which differs by the constant patch count, i.e. a rescaled λ.
    opt_d.zero_grad(set_to_none=True)
    loss_d = Pix2PixLoss().discriminator(
        discriminator(_discriminator_input(mr, dvr)),
        discriminator(_discriminator_input(mr, generator_output.detach())))
    loss_d.backward()
    opt_d.step()

    opt_g.zero_grad(set_to_none=True)
    terms = _generator_terms(discriminator(_discriminator_input(mr, generator_output)),
                             reconstruction(generator_output), lambda_l1)
    terms.total.backward()
    opt_g.step()
    return {"d": loss_d.item(), "g": terms.total.item(),
            "g_adversarial": terms.adversarial.item(), "g_l1": terms.l1.item()}


def sketcher_train_step(sketcher: Sketcher3D, discriminator: PatchDiscriminator3D, optimizers,
                        mr: torch.Tensor, dvr: torch.Tensor, *,
                        lambda_l1: float = LAMBDA_SKETCHER,
                        noise: torch.Tensor | None = None) -> dict[str, float]:
    """One Sketcher update (Wei eq. 2, 4, 6): adversarial + λS · mean L1 (eq. 4).

    ``mr`` (B, C, D, H, W), ``dvr`` (B, 1, D, H, W). Returns the loss terms as floats.
    """
    sketcher.train()
    discriminator.train()
    sketch = sketcher(mr, noise)
    return _adversarial_step(sketch, discriminator, optimizers, mr, dvr,
                             lambda out: F.l1_loss(out, dvr), lambda_l1)


def refiner_train_step(refiner: Refiner3D, discriminator: PatchDiscriminator3D, optimizers,
                       sketcher: Sketcher3D, mr: torch.Tensor, dvr: torch.Tensor,
                       weights: torch.Tensor, *, lambda_l1: float = LAMBDA_REFINER,
                       noise: torch.Tensor | None = None) -> dict[str, float]:
    """One Refiner update (Wei eq. 3, 5, 6): adversarial + λR · weighted L1 (eq. 5).

    The Sketcher is frozen (Wei §3.1: the Refiner is trained "by fixing our Sketcher"): it runs
    in eval mode without gradients, on fresh noise z ~ N(0, 1) as eq. 3 draws I_S ~ G_S(I_M, z).
    ``weights`` (B, 1, D, H, W) come from :func:`region_weights`, one subject at a time.
    """
    sketcher.eval()
    refiner.train()
    discriminator.train()
    with torch.no_grad():
        if noise is None and sketcher.noise_channels:
            noise = torch.randn((mr.shape[0], sketcher.noise_channels, *mr.shape[2:]),
                                device=mr.device, dtype=mr.dtype)
        sketch = sketcher(mr, noise)
    refined = refiner(mr, sketch)
    return _adversarial_step(refined, discriminator, optimizers, mr, dvr,
                             lambda out: weighted_l1(out, dvr, weights), lambda_l1)


# --------------------------------------------------------------------------------- metrics

def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _masked(pred, truth, mask) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_array(pred), _as_array(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if mask is None:
        return pred.ravel(), truth.ravel()
    mask = np.broadcast_to(_as_array(mask) > 0, pred.shape)
    if not mask.any():
        raise ValueError("mask is empty")
    return pred[mask], truth[mask]


def mse(pred, truth, mask=None) -> float:
    """Mean squared error over the voxels of ``mask`` (all voxels when None), Wei eq. 8.

    Eq. 8 writes ||I_P - Î_P||^2 per subject; its reported values (~0.008 on z-scored DVR,
    Table 1) are per-voxel means, as here. Average over subjects outside this function.
    """
    pred, truth = _masked(pred, truth, mask)
    return float(np.mean((pred - truth) ** 2))


def psnr(pred, truth, mask=None) -> float:
    """Peak signal-to-noise ratio, Wei eq. 9: 20 log10(MAX_{I_P}) - 10 log10(MSE).

    MAX_{I_P} is "the maximum voxel value of the image", the true DVR image I_P (within
    ``mask``), not the dynamic range (max - min) that scikit-image uses. Infinite for a perfect
    prediction; undefined (ValueError) when the true maximum is not positive.
    """
    pred, truth = _masked(pred, truth, mask)
    peak = float(truth.max())
    if peak <= 0:
        raise ValueError(f"PSNR needs a positive maximum true value, got {peak}")
    error = float(np.mean((pred - truth) ** 2))
    if error == 0:
        return math.inf
    return 20 * math.log10(peak) - 10 * math.log10(error)


# ------------------------------------------------------------------------ saliency, inference

def saliency_map(model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                 target: torch.Tensor,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss
                 ) -> np.ndarray:
    """Visual attention saliency map of a generator, Wei 2019 eq. 7 and §3.6.

    M = |∂Loss/∂I_M| by backpropagation (after Simonyan et al. 2013), then the maximum over the
    MR channels. ``inputs`` is one subject, (C, D, H, W) or (1, C, D, H, W); ``model`` maps it to
    a prediction for ``loss_fn(prediction, target)`` (for the Refiner alone, close over the
    sketch). An ``nn.Module`` is evaluated in eval mode and restored. Returns (D, H, W) numpy.
    """
    if inputs.dim() == 4:
        inputs = inputs.unsqueeze(0)
    if inputs.dim() != 5 or inputs.shape[0] != 1:
        raise ValueError(f"saliency_map takes one subject, (C, D, H, W); got {tuple(inputs.shape)}")
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.enable_grad():
            image = inputs.detach().clone().requires_grad_(True)
            loss = loss_fn(model(image), target)
            (gradient,) = torch.autograd.grad(loss, image)
    finally:
        if was_training:
            model.train()
    return gradient.abs().amax(dim=1)[0].cpu().numpy()


def _axis_tiles(size: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) per window along one axis; the kept parts tile [0, size)."""
    if window >= size:
        return [(0, 0, size)]
    step = window - overlap
    starts = list(range(0, size - window, step)) + [size - window]
    tiles = []
    for index, start in enumerate(starts):
        # Boundaries halfway through each overlap: every kept voxel is >= overlap/2 from an
        # interior window edge.
        keep_from = 0 if index == 0 else (starts[index - 1] + window + start) // 2
        keep_to = size if index == len(starts) - 1 else (start + window + starts[index + 1]) // 2
        tiles.append((start, keep_from, keep_to))
    return tiles


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * 3


def predict_volume(model: nn.Module, volume, *, window: int | Sequence[int] | None = None,
                   overlap: int | Sequence[int] = 32) -> np.ndarray:
    """Run a volume-to-volume generator on one subject; sliding windows when ``window`` is set.

    ``volume`` is (C, D, H, W), numpy or torch. The model runs in eval mode under
    ``torch.inference_mode`` on its own device; returns (out_channels, D, H, W) float32 numpy.

    With ``window`` (voxels; one int or three), the volume is padded exactly as the model pads
    it (to multiples of ``model.size_multiple`` = 2**levels, centred, edges repeated), cut into
    windows whose sizes and starts are multiples of 2**levels (so the stride-2 grids line up),
    and each window keeps only its part at least ``overlap``/2 voxels from an interior window
    edge. The result equals the whole-volume output wherever ``overlap``/2 reaches
    ``model.receptive_radius`` (65 voxels per default U-Net, 130 for the pair); with less, voxels
    near window seams differ by the effect of their distant context (see the tests).
    """
    multiple = int(getattr(model, "size_multiple", 1))
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    volume = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume,
                             dtype=torch.float32)
    if volume.dim() != 4:
        raise ValueError(f"predict_volume takes one subject, (C, D, H, W); got {tuple(volume.shape)}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            batch = volume.unsqueeze(0).to(device)
            if window is None:
                return model(batch)[0].float().cpu().numpy()
            padded, crop = pad_to_multiple(batch, multiple)
            sizes = padded.shape[2:]
            windows = [max(multiple, math.ceil(w / multiple) * multiple) for w in _triple(window)]
            overlaps = [math.ceil(o / multiple) * multiple for o in _triple(overlap)]
            for w, o in zip(windows, overlaps):
                if o >= w:
                    raise ValueError(f"overlap {o} must be smaller than the window {w} (both "
                                     f"rounded up to multiples of {multiple})")
            tiles = [_axis_tiles(size, min(w, size), o) for size, w, o in zip(sizes, windows, overlaps)]
            sizes_used = [min(w, size) for size, w in zip(sizes, windows)]
            output = None
            for chosen in itertools.product(*tiles):
                source = tuple(slice(t[0], t[0] + w) for t, w in zip(chosen, sizes_used))
                result = model(padded[(..., *source)])
                if output is None:
                    output = torch.zeros((result.shape[1], *sizes), dtype=torch.float32)
                keep = tuple(slice(t[1], t[2]) for t in chosen)
                local = tuple(slice(t[1] - t[0], t[2] - t[0]) for t in chosen)
                output[(..., *keep)] = result[0][(..., *local)].float().cpu()
            return output[(..., *crop)].numpy()
    finally:
        model.train(was_training)
