"""Networks for PET-to-MR synthesis: the pix2pix U-Net generator and PatchGAN discriminator
(Isola et al. 2017, as used by Choi & Lee 2018), their losses and optimisers, and safetensors
checkpoints with a JSON card (never pickles)."""

from synthquant.nets.checkpoint import LoadedModel, load_model, save_model
from synthquant.nets.pix2pix import (
    NETS_REGISTRY,
    GeneratorLossTerms,
    PatchDiscriminator2D,
    Pix2PixLoss,
    UNetGenerator2D,
    define_D,
    define_G,
    discriminator_input,
    init_weights,
    make_optimizers,
    train_step,
)

__all__ = [
    "NETS_REGISTRY",
    "GeneratorLossTerms",
    "LoadedModel",
    "PatchDiscriminator2D",
    "Pix2PixLoss",
    "UNetGenerator2D",
    "define_D",
    "define_G",
    "discriminator_input",
    "init_weights",
    "load_model",
    "make_optimizers",
    "save_model",
    "train_step",
]
