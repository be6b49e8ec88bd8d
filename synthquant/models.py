"""Which model file a run uses, checked before any subject starts.

DESIGN "Models": a model is ``NAME.safetensors`` plus ``NAME.json``; ``--models DIR`` names the
folder and the names are ``mr_from_fbp`` and ``dvr_from_mri``. Without ``--models``, the demo
weights shipped in ``synthquant/data/models`` are used. They were trained on synthetic phantom
cohorts only (their card says so), so a run that falls back on them says so on stderr and in
every sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthquant.errors import InputError

#: Model names (DESIGN "Models").
MR_FROM_FBP = "mr_from_fbp"
DVR_FROM_MRI = "dvr_from_mri"
#: Demo weights trained on phantoms; see ``scripts/train_demo_models.py``.
BUNDLED_MODELS_DIR = Path(__file__).parent / "data" / "models"


@dataclass(frozen=True)
class ModelChoice:
    """A checked model: the path stem the interfaces load, and what the sidecars record."""

    stem: Path          # NAME without suffix
    sha256: str         # of NAME.safetensors
    synthetic_only: bool  # trained on phantoms only
    card: dict

    @property
    def weights(self) -> Path:
        return self.stem.with_suffix(".safetensors")

    def provenance(self) -> dict:
        """Sidecar fields (DESIGN: 'the model file and its SHA-256')."""
        fields = {"ModelFile": str(self.weights), "ModelSHA256": self.sha256}
        if self.synthetic_only:
            fields["ModelWarning"] = ("demo weights trained on synthetic phantom cohorts only; "
                                      "not validated on real PET (pass --models DIR)")
        return fields


def resolve_model(name: str, models_dir: Path | None) -> ModelChoice:
    """Find ``name`` in ``models_dir`` (or the bundled demo weights) and load it once on the CPU.

    Loading here, before the graph runs, turns a missing, corrupt, pickled or mismatched model
    into one line naming the file, instead of the same failure in every subject. The card is
    checked too: ``mr_from_fbp`` for its input grid, ``dvr_from_mri`` for a DVR generator
    architecture, its input grid's voxel size, the modality order (MTR, FA, RD, AD) and the
    intensity normalisation (:func:`synthquant.nets.dvr.check_dvr_card`).
    """
    from synthquant.nets import MYELIN_NETS_REGISTRY, NETS_REGISTRY, load_model  # noqa: PLC0415 - torch import

    if name not in (MR_FROM_FBP, DVR_FROM_MRI):
        raise InputError(None, f"unknown model name {name!r} (known: {MR_FROM_FBP}, {DVR_FROM_MRI})")
    folder = Path(models_dir) if models_dir is not None else BUNDLED_MODELS_DIR
    if models_dir is not None and not folder.is_dir():
        raise InputError(folder, "--models directory not found")
    stem = folder / name
    registry = NETS_REGISTRY if name == MR_FROM_FBP else MYELIN_NETS_REGISTRY
    loaded = load_model(stem, registry, device="cpu")
    if name == MR_FROM_FBP:
        from synthquant.nets.inference import check_card_grid  # noqa: PLC0415

        check_card_grid(loaded.card, stem.with_suffix(".json"))
    else:
        from synthquant.nets.dvr import check_dvr_card  # noqa: PLC0415

        check_dvr_card(loaded.card, stem.with_suffix(".json"))
    return ModelChoice(stem=stem, sha256=loaded.sha256,
                       synthetic_only=bool(loaded.card.get("synthetic_phantom_only", False)), card=loaded.card)
