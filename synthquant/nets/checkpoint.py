"""Model checkpoints: ``NAME.safetensors`` (CPU state_dict) plus ``NAME.json`` (the card).

Weights are read only through safetensors, never ``torch.load`` or pickle, so a checkpoint
cannot run code. Every way a checkpoint can be unusable raises ``InputError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import nn

from synthquant.errors import InputError
from synthquant.image import atomic_output, atomic_write_text

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"


class LoadedModel(NamedTuple):
    model: nn.Module  # in eval mode, on the requested device
    card: dict[str, Any]
    sha256: str  # of the .safetensors file, for provenance sidecars


def _paths(path_without_suffix: str | Path) -> tuple[Path, Path]:
    stem = str(path_without_suffix)
    for suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        stem = stem.removesuffix(suffix)
    return Path(stem + WEIGHTS_SUFFIX), Path(stem + CARD_SUFFIX)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path,
                      metadata: Mapping[str, str] | None = None) -> str:
    """Write ``tensors`` to ``path`` through a temporary sibling (renamed on success), with the
    permissions of any new file; return the file's SHA-256. safetensors alone creates its files
    0600, which would hide a model trained on a shared cluster from the lab's group."""
    with atomic_output(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        sha256 = _sha256(tmp.read_bytes())
    return sha256


def save_model(model: nn.Module, path_without_suffix: str | Path,
               card: Mapping[str, Any] | None = None, *, dtype: torch.dtype | None = None) -> str:
    """Write ``NAME.safetensors`` and ``NAME.json``; return the weights' SHA-256.

    The card gets ``architecture`` (the class name) and ``kwargs`` (the model's ``config``)
    unless the caller gives them, plus ``weights_sha256``; other caller keys are kept as is and
    must be JSON-serialisable. Both files are written to temporaries and then renamed, so a
    failure never leaves a half-written checkpoint. ``dtype`` (e.g. ``torch.float16``) stores
    floating-point tensors at that precision, to halve a bundled file; loading casts them back
    to the model's own dtype.
    """
    weights_path, card_path = _paths(path_without_suffix)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    full_card: dict[str, Any] = {
        "architecture": type(model).__name__,
        "kwargs": dict(getattr(model, "config", {})),
        **dict(card or {}),
    }
    state = {name: tensor.detach().cpu().contiguous()
             for name, tensor in model.state_dict().items()}
    if dtype is not None:
        state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}
        full_card["stored_dtype"] = str(dtype).removeprefix("torch.")
    # Weights first, the card (which records their SHA-256) renamed into place last: a failure
    # between the two leaves a card that does not match, which load_model refuses.
    full_card["weights_sha256"] = write_safetensors(state, weights_path,
                                                    {"architecture": full_card["architecture"]})
    atomic_write_text(json.dumps(full_card, indent=2, sort_keys=True) + "\n", card_path)
    return full_card["weights_sha256"]


def _read_card(card_path: Path) -> dict[str, Any]:
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(card_path, f"model card is not readable JSON ({error})") from None
    if not isinstance(card, dict) or not isinstance(card.get("architecture"), str) \
            or not isinstance(card.get("kwargs", {}), dict):
        raise InputError(card_path, "model card needs an 'architecture' string and a 'kwargs' "
                                    "object")
    return card


def _read_weights(weights_path: Path) -> tuple[dict[str, torch.Tensor], str]:
    try:
        data = weights_path.read_bytes()
    except OSError as error:
        raise InputError(weights_path, f"cannot read weights ({error.strerror})") from None
    try:
        state = load_safetensors_bytes(data)
    except Exception:  # noqa: BLE001 - any parse failure means the file is unusable
        # Classify only after parsing fails: a valid safetensors header length may start 0x80.
        if data[:4] == b"PK\x03\x04":
            reason = "is a zip (torch.save) checkpoint, which is a pickle; not loaded " \
                     "(convert it to safetensors)"
        elif data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            reason = "is a pickle, not safetensors; not loaded (pickles can run code)"
        else:
            reason = "is not a readable safetensors file (truncated or corrupt)"
        raise InputError(weights_path, reason) from None
    return state, _sha256(data)


def _check_state(weights_path: Path, model: nn.Module, state: Mapping[str, torch.Tensor],
                 description: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected
                   if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong_shape):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if wrong_shape:
        k = wrong_shape[0]
        problems.append(f"{len(wrong_shape)} with wrong shape (e.g. {k!r}: file "
                        f"{tuple(state[k].shape)}, model {tuple(expected[k].shape)})")
    raise InputError(weights_path, f"weights do not match {description}: tensors "
                                   + ", ".join(problems))


def load_model(path_without_suffix: str | Path, registry: Mapping[str, Callable[..., nn.Module]],
               device: str | torch.device = "cpu") -> LoadedModel:
    """Build the card's architecture from ``registry`` and load the safetensors weights.

    Returns the model (eval mode, on ``device``), the card and the weights' SHA-256.
    Raises ``InputError`` for a missing file, unreadable card, pickle or corrupt weights, a
    SHA-256 that differs from the card's, an unknown architecture, or mismatched tensors.
    """
    weights_path, card_path = _paths(path_without_suffix)
    for path in (weights_path, card_path):
        if not path.is_file():
            raise InputError(path, "model file not found")
    card = _read_card(card_path)
    state, sha256 = _read_weights(weights_path)
    recorded = card.get("weights_sha256")
    if recorded is not None and recorded != sha256:
        raise InputError(weights_path, f"SHA-256 {sha256[:12]}... differs from the card's "
                                       f"{str(recorded)[:12]}... (weights and card mismatched)")
    architecture, kwargs = card["architecture"], card.get("kwargs", {})
    if architecture not in registry:
        raise InputError(card_path, f"unknown architecture {architecture!r} (known: "
                                    f"{', '.join(sorted(registry)) or 'none'})")
    description = f"{architecture}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = registry[architecture](**kwargs)
    except (TypeError, ValueError) as error:
        raise InputError(card_path, f"cannot build {description}: {error}") from None
    _check_state(weights_path, model, state, description)
    model.load_state_dict(state)
    return LoadedModel(model.to(device).eval(), card, sha256)
