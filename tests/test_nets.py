"""pix2pix networks (shapes, range, overfitting one pair) and safetensors checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
import torch

from synthquant.errors import InputError
from synthquant.nets import (
    NETS_REGISTRY,
    PatchDiscriminator2D,
    Pix2PixLoss,
    UNetGenerator2D,
    define_D,
    define_G,
    load_model,
    make_optimizers,
    save_model,
    train_step,
)

torch.set_num_threads(2)


@pytest.mark.parametrize(
    ("in_channels", "depth", "shape"),
    [
        (1, 6, (1, 1, 64, 64)),
        (3, 6, (2, 3, 192, 256)),  # 2.5D: 3 adjacent slices; 192x256 fits depth 6 unpadded
        (1, 8, (1, 1, 192, 256)),  # unet_256: padded to 256x256 internally, cropped back
        (1, 4, (1, 1, 40, 56)),  # padded to 48x64
    ],
)
def test_generator_shape_and_range(in_channels, depth, shape):
    torch.manual_seed(0)
    generator = define_G(in_channels=in_channels, base_features=8, depth=depth)
    pet = torch.rand(shape) * 2 - 1
    with torch.no_grad():
        pseudo_t1w = generator(pet)
    assert pseudo_t1w.shape == (shape[0], 1, *shape[2:])
    assert pseudo_t1w.min() >= -1 and pseudo_t1w.max() <= 1


@pytest.mark.parametrize(
    ("in_channels", "n_layers", "shape", "patch_map"),
    [
        (2, 3, (1, 2, 64, 64), (6, 6)),
        (4, 3, (2, 4, 192, 256), (22, 30)),
        (2, 2, (1, 2, 64, 64), (14, 14)),
    ],
)
def test_discriminator_patch_map(in_channels, n_layers, shape, patch_map):
    discriminator = define_D(in_channels=in_channels, base_features=8, n_layers=n_layers)
    with torch.no_grad():
        logits = discriminator(torch.zeros(shape))
    assert logits.shape == (shape[0], 1, *patch_map)


def test_dropout_sits_in_three_innermost_decoder_blocks():
    generator = UNetGenerator2D(base_features=4, depth=8)
    with_dropout = [level for level, block in enumerate(generator.up)
                    if any(isinstance(m, torch.nn.Dropout) for m in block.modules())]
    assert with_dropout == [4, 5, 6]


def test_losses_follow_pix2pix():
    loss = Pix2PixLoss()
    logits = torch.zeros(1, 1, 4, 4)  # BCE at p = 0.5 is log 2
    terms = loss.generator(logits, torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5))
    assert terms.adversarial.item() == pytest.approx(0.6931, abs=1e-4)
    assert terms.total.item() == pytest.approx(0.6931 + 100 * 0.5, abs=1e-3)
    assert loss.discriminator(logits, logits).item() == pytest.approx(0.6931, abs=1e-4)


def test_training_overfits_one_pair():
    # A PET-like blob and a T1w-like disc: 20 pix2pix steps (Adam 2e-4) must lower the L1 term.
    torch.manual_seed(0)
    generator = define_G(base_features=8, depth=4)
    discriminator = define_D(in_channels=2, base_features=8)
    optimizers = make_optimizers(generator, discriminator)
    loss = Pix2PixLoss()
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    radius2 = (x**2 + y**2)[None, None]
    pet = 2 * torch.exp(-4 * radius2) - 1
    real_t1w = torch.where(radius2 < 0.5, 0.6, -1.0)
    l1 = [train_step(generator, discriminator, optimizers, loss, pet, real_t1w)["g_l1"]
          for _ in range(21)]
    assert l1[20] < 0.97 * l1[0]
    assert sum(l1[-5:]) < sum(l1[:5])


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    generator = define_G(in_channels=3, base_features=8, depth=4)
    generator.train()
    train_step(generator, define_D(in_channels=4, base_features=8),
               make_optimizers(generator, define_D(in_channels=4, base_features=8)),
               Pix2PixLoss(), torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32))  # moves BN stats
    sha = save_model(generator, tmp_path / "models" / "g", {"training_slices": 7})
    loaded = load_model(tmp_path / "models" / "g", NETS_REGISTRY)
    assert loaded.sha256 == sha and len(sha) == 64
    assert loaded.card["architecture"] == "UNetGenerator2D"
    assert loaded.card["kwargs"]["in_channels"] == 3 and loaded.card["training_slices"] == 7
    assert not loaded.model.training
    pet = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(generator.eval()(pet), loaded.model(pet))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["g.json",
                                                                       "g.safetensors"]
    # Both files as the umask allows (safetensors alone writes 0600: unreadable to the lab's group).
    previous = os.umask(0o027)
    try:
        save_model(generator, tmp_path / "shared" / "g")
    finally:
        os.umask(previous)
    for name in ("g.safetensors", "g.json"):
        assert stat.S_IMODE((tmp_path / "shared" / name).stat().st_mode) == 0o640, name


def test_half_precision_storage_halves_the_file_and_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    generator = define_G(base_features=8, depth=6).eval()
    save_model(generator, tmp_path / "full")
    save_model(generator, tmp_path / "half", dtype=torch.float16)
    full, half = (tmp_path / "full.safetensors").stat().st_size, (tmp_path / "half.safetensors").stat().st_size
    assert 0.45 < half / full < 0.55
    loaded = load_model(tmp_path / "half", NETS_REGISTRY)
    assert loaded.card["stored_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    pet = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        # float16 keeps ~3 significant digits; outputs lie in [-1, 1].
        assert torch.allclose(generator(pet), loaded.model(pet), atol=5e-3)


@pytest.fixture
def checkpoint(tmp_path):
    save_model(PatchDiscriminator2D(base_features=4, n_layers=2), tmp_path / "d", {})
    return tmp_path / "d"


def _raises_naming(path, match, stem):
    with pytest.raises(InputError, match=match) as error:
        load_model(stem, NETS_REGISTRY)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_files(checkpoint):
    weights = checkpoint.with_suffix(".safetensors")
    card = checkpoint.with_suffix(".json")
    card_text = card.read_text()
    card.unlink()
    _raises_naming(card, "not found", checkpoint)
    card.write_text(card_text)
    weights.unlink()
    _raises_naming(weights, "not found", checkpoint)


def test_pickle_is_refused(checkpoint):
    weights = checkpoint.with_suffix(".safetensors")
    weights.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    _raises_naming(weights, "is a pickle", checkpoint)
    torch.save({"weight": torch.zeros(2)}, weights)  # zip container around a pickle
    _raises_naming(weights, "zip .* pickle", checkpoint)


def test_corrupt_weights(checkpoint):
    weights = checkpoint.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:200])
    _raises_naming(weights, "truncated or corrupt", checkpoint)


def test_unknown_architecture(checkpoint):
    card = checkpoint.with_suffix(".json")
    content = json.loads(card.read_text())
    content["architecture"] = "ResNet9"
    card.write_text(json.dumps(content))
    _raises_naming(card, "unknown architecture 'ResNet9'", checkpoint)


def test_kwargs_that_do_not_match_weights(checkpoint):
    card = checkpoint.with_suffix(".json")
    content = json.loads(card.read_text())
    content["kwargs"]["base_features"] = 8
    card.write_text(json.dumps(content))
    _raises_naming(checkpoint.with_suffix(".safetensors"), "wrong shape", checkpoint)
    content["kwargs"]["base_features"], content["kwargs"]["n_layers"] = 4, 3
    card.write_text(json.dumps(content))
    _raises_naming(checkpoint.with_suffix(".safetensors"), "missing", checkpoint)


def test_weights_swapped_under_card(checkpoint, tmp_path):
    save_model(PatchDiscriminator2D(base_features=4, n_layers=2), tmp_path / "other", {})
    checkpoint.with_suffix(".safetensors").write_bytes(
        (tmp_path / "other.safetensors").read_bytes())
    _raises_naming(checkpoint.with_suffix(".safetensors"), "SHA-256", checkpoint)
