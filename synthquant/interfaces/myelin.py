"""Nipype interfaces of the myelin arm: thin wrappers over :mod:`synthquant.myelinprep`."""

from __future__ import annotations

import json

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from synthquant.interfaces.amyloid import ReportOutputSpec


def _optional(value):
    return value if isdefined(value) and value else None


class _MTRInputSpec(BaseInterfaceInputSpec):
    mtr = File(exists=True, desc="MTR map (percent)")
    mt_on = File(exists=True, desc="MT-on image (when no map is given)")
    mt_off = File(exists=True, desc="MT-off image (when no map is given)")


class _MTROutputSpec(TraitedSpec):
    mtr = File(exists=True)


class MTRMap(SimpleInterface):
    """The MTR map, or one computed from the MT pair (:func:`synthquant.myelinprep.mtr_map`)."""

    input_spec = _MTRInputSpec
    output_spec = _MTROutputSpec

    def _run_interface(self, runtime):
        from synthquant.myelinprep import mtr_map

        self._results["mtr"] = str(mtr_map(_optional(self.inputs.mtr), _optional(self.inputs.mt_on),
                                           _optional(self.inputs.mt_off), runtime.cwd))
        return runtime


class _DTIInputSpec(BaseInterfaceInputSpec):
    dwi = File(exists=True, mandatory=True)
    bval = File(exists=True, mandatory=True)
    bvec = File(exists=True, mandatory=True)


class _DTIOutputSpec(TraitedSpec):
    fa = File(exists=True)
    rd = File(exists=True)
    ad = File(exists=True)
    md = File(exists=True)
    b0 = File(exists=True, desc="mean b0 (the DWI's coregistration image)")


class DTIMaps(SimpleInterface):
    """Tensor fit (dipy) -> FA, RD, AD, MD, and the mean b0 (:func:`synthquant.myelinprep.dti_maps`)."""

    input_spec = _DTIInputSpec
    output_spec = _DTIOutputSpec

    def _run_interface(self, runtime):
        from synthquant.myelinprep import dti_maps

        paths = dti_maps(self.inputs.dwi, self.inputs.bval, self.inputs.bvec, runtime.cwd)
        self._results.update({key.lower(): str(paths[key]) for key in ("FA", "RD", "AD", "MD", "b0")})
        return runtime


class _T1wMasksInputSpec(BaseInterfaceInputSpec):
    t1w_brain = File(exists=True, mandatory=True)
    brain_mask = File(exists=True, mandatory=True)
    lesion = File(exists=True, desc="lesion mask (on the T1w grid; another grid is resampled and noted)")
    inverse_transforms = InputMultiObject(File(exists=True), mandatory=True, desc="template -> T1w (ANTs order)")
    inverse_invert = traits.List(traits.Bool, mandatory=True)


class _T1wMasksOutputSpec(TraitedSpec):
    brain = File(exists=True)
    wm = File(exists=True)
    nawm = File(exists=True)
    lesion = File(exists=True)
    notes = traits.List(traits.Str)


class T1wMasks(SimpleInterface):
    """WM (Atropos, lesion-filled), NAWM and lesion masks of the T1w (:func:`synthquant.myelinprep.t1w_masks`)."""

    input_spec = _T1wMasksInputSpec
    output_spec = _T1wMasksOutputSpec

    def _run_interface(self, runtime):
        from synthquant.myelinprep import t1w_masks

        paths, notes = t1w_masks(self.inputs.t1w_brain, self.inputs.brain_mask, _optional(self.inputs.lesion),
                                 list(zip(self.inputs.inverse_transforms, self.inputs.inverse_invert)), runtime.cwd)
        self._results.update({key: str(value) for key, value in paths.items()})
        self._results["notes"] = notes
        return runtime


class _GridInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="image whose axes the grid takes (MTR or PET)")
    brain_mask = File(exists=True, mandatory=True, desc="T1w brain mask")
    reference_to_t1w = File(exists=True, mandatory=True, desc="rigid transform, reference -> T1w")
    voxel_mm = traits.Float(2.0, usedefault=True)


class _GridOutputSpec(TraitedSpec):
    grid = File(exists=True)


class MyelinGrid(SimpleInterface):
    """The myelin grid around the brain (:func:`synthquant.myelinprep.myelin_grid`)."""

    input_spec = _GridInputSpec
    output_spec = _GridOutputSpec

    def _run_interface(self, runtime):
        from pathlib import Path

        from synthquant.myelinprep import myelin_grid

        self._results["grid"] = str(myelin_grid(self.inputs.reference, self.inputs.brain_mask,
                                                self.inputs.reference_to_t1w, Path(runtime.cwd) / "grid.nii.gz",
                                                voxel_mm=self.inputs.voxel_mm))
        return runtime


class _MapsOnGridInputSpec(BaseInterfaceInputSpec):
    grid = File(exists=True, mandatory=True)
    grid_to_t1w = File(exists=True, mandatory=True)
    mtr = File(exists=True, mandatory=True)
    mtr_to_t1w = File(exists=True, mandatory=True)
    fa = File(exists=True, mandatory=True)
    rd = File(exists=True, mandatory=True)
    ad = File(exists=True, mandatory=True)
    dwi_to_t1w = File(exists=True, mandatory=True)
    brain = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True)
    nawm = File(exists=True, mandatory=True)
    lesion = File(exists=True, mandatory=True)


class _MapsOnGridOutputSpec(TraitedSpec):
    mtr = File(exists=True)
    fa = File(exists=True)
    rd = File(exists=True)
    ad = File(exists=True)
    brain = File(exists=True)
    wm = File(exists=True)
    nawm = File(exists=True)
    lesion = File(exists=True)


class MapsOnGrid(SimpleInterface):
    """MR maps and T1w masks resampled once onto the myelin grid (:func:`synthquant.myelinprep.maps_on_grid`)."""

    input_spec = _MapsOnGridInputSpec
    output_spec = _MapsOnGridOutputSpec

    def _run_interface(self, runtime):
        from synthquant.myelinprep import maps_on_grid

        i = self.inputs
        paths = maps_on_grid(i.grid, i.grid_to_t1w, runtime.cwd, mtr=i.mtr, mtr_to_t1w=i.mtr_to_t1w,
                             dti={"FA": i.fa, "RD": i.rd, "AD": i.ad}, dwi_to_t1w=i.dwi_to_t1w,
                             masks_t1w={"brain": i.brain, "wm": i.wm, "nawm": i.nawm, "lesion": i.lesion})
        self._results.update({key.lower(): str(value) for key, value in paths.items()})
        return runtime


class _PETMeanInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="dynamic PET (4D)")
    sidecar = File(exists=True, mandatory=True)


class _PETMeanOutputSpec(TraitedSpec):
    mean_pet = File(exists=True)


class PETMean(SimpleInterface):
    """Frame-duration-weighted mean of a dynamic PET (:func:`synthquant.myelinprep.pet_mean`)."""

    input_spec = _PETMeanInputSpec
    output_spec = _PETMeanOutputSpec

    def _run_interface(self, runtime):
        from pathlib import Path

        from synthquant.myelinprep import pet_mean

        self._results["mean_pet"] = str(pet_mean(self.inputs.pet, self.inputs.sidecar,
                                                 Path(runtime.cwd) / "pet_mean.nii.gz"))
        return runtime


class _PIBDVRInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="dynamic [11C]PIB PET")
    sidecar = File(exists=True, mandatory=True)
    pet_to_t1w = File(exists=True, mandatory=True)
    inverse_transforms = InputMultiObject(File(exists=True), mandatory=True, desc="template -> T1w (ANTs order)")
    inverse_invert = traits.List(traits.Bool, mandatory=True, desc="invert flag of each inverse transform")
    brain_mask = File(exists=True, mandatory=True, desc="T1w brain mask")
    t_star_min = traits.Float(desc="Logan t* (min); default synthquant.kinetics.T_STAR_MIN")


class _PIBDVROutputSpec(TraitedSpec):
    dvr = File(exists=True, desc="Logan reference DVR on the PET's grid")
    reference_mask = File(exists=True)
    metadata = traits.Dict()


class PIBDVR(SimpleInterface):
    """True DVR of a dynamic PIB PET by the Logan reference plot (:func:`synthquant.myelinprep.pib_dvr`)."""

    input_spec = _PIBDVRInputSpec
    output_spec = _PIBDVROutputSpec

    def _run_interface(self, runtime):
        from synthquant.myelinprep import pib_dvr

        i = self.inputs
        fit = pib_dvr(i.pet, i.sidecar, i.pet_to_t1w, list(zip(i.inverse_transforms, i.inverse_invert)),
                      i.brain_mask, runtime.cwd, t_star_min=i.t_star_min if isdefined(i.t_star_min) else None)
        self._results.update(dvr=fit["dvr"], reference_mask=fit["reference_mask"], metadata={
            "LoganTStar_min": fit["t_star_min"], "LoganFramesFit": fit["n_frames_fit"],
            "ReferenceRegion": "cerebellar grey matter (AAL2 cerebellum within the template GM prior), pulled back "
                               "through the inverse normalisation", "ReferenceVoxels": fit["reference_voxels"]})
        return runtime


class _OntoGridInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    grid = File(exists=True, mandatory=True)
    grid_to_t1w = File(exists=True, mandatory=True, desc="rigid transform of the grid's reference onto the T1w")
    source_to_t1w = File(exists=True, mandatory=True, desc="rigid transform of in_file's space onto the T1w")


class _OntoGridOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class OntoGrid(SimpleInterface):
    """A map of another space (e.g. the PIB DVR) onto the myelin grid, through the T1w."""

    input_spec = _OntoGridInputSpec
    output_spec = _OntoGridOutputSpec

    def _run_interface(self, runtime):
        from pathlib import Path

        from synthquant.myelinprep import resample_onto

        self._results["out_file"] = str(resample_onto(
            self.inputs.in_file, self.inputs.grid, [(self.inputs.grid_to_t1w, True), (self.inputs.source_to_t1w, False)],
            out_file=Path(runtime.cwd) / "on_grid.nii.gz"))
        return runtime


class _QuantifyDVRInputSpec(BaseInterfaceInputSpec):
    dvr = File(exists=True, mandatory=True, desc="DVR on the myelin grid")
    source = traits.Enum("synth", "pib", mandatory=True)
    lesion = File(exists=True, mandatory=True)
    nawm = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True)
    grid_to_t1w = File(exists=True, mandatory=True)
    transforms = InputMultiObject(File(exists=True), mandatory=True, desc="T1w -> template (ANTs order)")
    inverse_transforms = InputMultiObject(File(exists=True), mandatory=True)
    inverse_invert = traits.List(traits.Bool, mandatory=True)
    hc_norm = traits.Str("", usedefault=True, desc="HC WM norm JSON ('' for none)")
    k = traits.Float(2.0, usedefault=True, desc="demyelinated below mean - k SD")
    lesion_mask_given = traits.Bool(True, usedefault=True)


class _QuantifyDVROutputSpec(TraitedSpec):
    rows = traits.Str(desc="ROI rows as JSON")
    dvr_template = File(exists=True)
    lesion_template = File(exists=True)
    wm_template = File(exists=True)
    demyelinated = File(desc="demyelinated voxels on the myelin grid (absent without a norm)")
    demyelinated_template = File()
    notes = traits.List(traits.Str)


class QuantifyDVR(SimpleInterface):
    """ROI means, template maps and demyelinated voxels (:func:`synthquant.myelinprep.quantify_dvr`)."""

    input_spec = _QuantifyDVRInputSpec
    output_spec = _QuantifyDVROutputSpec

    def _run_interface(self, runtime):
        from synthquant.myelinprep import quantify_dvr

        i = self.inputs
        result = quantify_dvr(i.dvr, {"lesion": i.lesion, "nawm": i.nawm, "wm": i.wm}, i.grid_to_t1w,
                              list(i.transforms), list(zip(i.inverse_transforms, i.inverse_invert)), runtime.cwd,
                              norm_json=i.hc_norm or None, k=i.k, lesion_mask_given=i.lesion_mask_given)
        self._results.update(rows=json.dumps(result["rows"]), notes=result["notes"],
                             dvr_template=str(result["dvr_template"]), lesion_template=str(result["lesion_template"]),
                             wm_template=str(result["wm_template"]))
        if result["demyelinated"] is not None:
            self._results.update(demyelinated=str(result["demyelinated"]),
                                 demyelinated_template=str(result["demyelinated_template"]))
        return runtime


class _MyelinTableInputSpec(BaseInterfaceInputSpec):
    identity = traits.Dict(mandatory=True, desc="participant_id, session_id, site, group")
    sources = traits.List(traits.Str, mandatory=True)
    rows = traits.List(traits.Str, mandatory=True, desc="JSON rows per source")


class _MyelinTableOutputSpec(TraitedSpec):
    table = File(exists=True)


class MyelinTable(SimpleInterface):
    """One subject's rows of ``group/myelin_stats.tsv`` (:func:`synthquant.myelin.myelin_table`)."""

    input_spec = _MyelinTableInputSpec
    output_spec = _MyelinTableOutputSpec

    def _run_interface(self, runtime):
        from pathlib import Path

        from synthquant.image import atomic_write_text
        from synthquant.myelin import myelin_table
        from synthquant.quantify import format_table

        table = myelin_table([({**self.inputs.identity, "source": source}, json.loads(rows))
                              for source, rows in zip(self.inputs.sources, self.inputs.rows)])
        self._results["table"] = str(atomic_write_text(format_table(table), Path(runtime.cwd) / "myelinstats.tsv"))
        return runtime


class _MyelinReportInputSpec(BaseInterfaceInputSpec):
    subject_key = traits.Str(mandatory=True, desc="sub-<L>[_ses-<S>]")
    site = traits.Str("n/a", usedefault=True)
    group = traits.Str("n/a", usedefault=True, desc="control, patient or n/a")
    mtr = File(exists=True, mandatory=True, desc="MTR on the myelin grid")
    fa = File(exists=True, mandatory=True)
    rd = File(exists=True, mandatory=True)
    ad = File(exists=True, mandatory=True)
    brain = File(exists=True, mandatory=True, desc="brain mask on the myelin grid")
    lesion = File(exists=True, mandatory=True, desc="lesion mask on the myelin grid (empty for a control)")
    synth_dvr = File(exists=True, mandatory=True, desc="predicted DVR on the myelin grid")
    pib_dvr = File(exists=True, desc="true DVR on the myelin grid (a dynamic PIB PET only)")
    saliency = File(exists=True, desc="saliency map of the prediction")
    demyelinated_synth = File(exists=True, desc="demyelinated voxels of the predicted DVR (with an HC norm)")
    demyelinated_pib = File(exists=True, desc="demyelinated voxels of the true DVR (with an HC norm)")
    table = File(exists=True, mandatory=True, desc="the session's myelinstats.tsv")
    notes = traits.List(traits.Str, usedefault=True)
    provenance = traits.Dict(usedefault=True, desc="model file, SHA-256, warnings, software versions")
    k = traits.Float(desc="demyelinated below the HC norm's mean - k SD")


class MyelinReport(SimpleInterface):
    """Render the session's myelin HTML report (:func:`synthquant.reports.myelin.render_myelin_report`)."""

    input_spec = _MyelinReportInputSpec
    output_spec = ReportOutputSpec

    def _run_interface(self, runtime):
        from synthquant.reports.myelin import render_myelin_report

        i = self.inputs
        result = render_myelin_report(
            subject_key=i.subject_key, site=i.site, group=i.group,
            maps={"MTR": i.mtr, "FA": i.fa, "RD": i.rd, "AD": i.ad}, masks={"brain": i.brain, "lesion": i.lesion},
            dvr={"synth": i.synth_dvr, "pib": _optional(i.pib_dvr)}, saliency=_optional(i.saliency),
            demyelinated={"synth": _optional(i.demyelinated_synth), "pib": _optional(i.demyelinated_pib)},
            table=i.table, notes=list(i.notes), provenance=dict(i.provenance), k=i.k if isdefined(i.k) else None,
            out_dir=runtime.cwd)
        self._results.update(result)
        return runtime
