"""One frozen run configuration, read by every part and dumped next to the outputs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Method labels (DESIGN, "Method labels"): used as ``desc-`` values and in tables.
METHODS = ("mr", "synthmr", "pettemplate", "multiatlas", "petseg")
#: Methods that read FBP PET templates (``--pet-templates``).
TEMPLATE_METHODS = ("pettemplate", "multiatlas")
PIPELINES = ("amyloid", "myelin", "all")


@dataclass(frozen=True)
class RunConfig:
    """Everything one invocation needs; built once by :mod:`synthquant.cli`."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_labels: tuple[str, ...] = ()
    pipeline: str = "amyloid"
    methods: tuple[str, ...] | None = None  # None: synthmr, plus mr where a T1w exists
    nprocs: int = 1
    omp_nthreads: int = 1
    device: str = "auto"
    models_dir: Path | None = None
    batch_by: str | None = None
    #: pydra worker of ``--batch-by``: "cf" (local processes) or "slurm".
    batch_worker: str = "cf"
    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    #: Voxel size (mm) of the template used for SyN; quantification is always on the 2 mm grid.
    template_resolution: float = 1.0
    #: "SLOPE,INTERCEPT" for tracers without a built-in Centiloid equation.
    centiloid_equation: str | None = None
    lesion_dir: Path | None = None
    #: Folder of FBP PET templates (pettemplate, multiatlas); default: ``models_dir/pet_templates``.
    pet_templates_dir: Path | None = None
    #: Group level: also build PET templates from this run's mr-normalised PETs.
    build_pet_templates: bool = False
    pet_template_levels: int = 4
    #: Folder of healthy-control WM DVR norms (``hc_wm_norm_src-*.json``); default: the one the
    #: group level wrote into ``output_dir/group/hc_wm_norm``, where it exists.
    hc_norm_dir: Path | None = None
    #: Bodini 2016: a lesional voxel is demyelinated below the HC WM mean - k SD.
    demyelination_k: float = 2.0
    seed: int = 0

    @property
    def pet_templates(self) -> Path | None:
        """Where the PET-template methods read their templates, if anywhere."""
        if self.pet_templates_dir is not None:
            return self.pet_templates_dir
        if self.models_dir is not None and (self.models_dir / "pet_templates").is_dir():
            return self.models_dir / "pet_templates"
        return None

    @property
    def hc_norm(self) -> Path | None:
        """Where the participant level reads the HC WM norms, if anywhere."""
        if self.hc_norm_dir is not None:
            return self.hc_norm_dir
        built = self.output_dir / "group" / "hc_wm_norm"
        return built if built.is_dir() else None

    @property
    def runs_amyloid(self) -> bool:
        return self.pipeline in ("amyloid", "all")

    @property
    def runs_myelin(self) -> bool:
        return self.pipeline in ("myelin", "all")

    def to_json(self) -> str:
        def plain(value):
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return list(value)
            return value

        return json.dumps({k: plain(v) for k, v in asdict(self).items()}, indent=2)


def apply_threads(omp_nthreads: int, seed: int = 0) -> None:
    """Set the thread counts of ITK, BLAS/OpenMP and torch for this process and its children.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when antspyx is imported, so this
    runs before any import of ``ants``. Nipype's MultiProc workers inherit the environment.
    """
    n = str(max(1, int(omp_nthreads)))
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS"):
        os.environ[var] = n
    # ANTs seeds its metric sampling from this variable (see synthquant.registration).
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed) + 1)
