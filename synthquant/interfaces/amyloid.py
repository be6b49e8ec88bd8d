"""Nipype interfaces of the amyloid arm: thin wrappers over plain functions.

Each ``_run_interface`` imports its function lazily (antspyx and torch stay out of graph
building) and writes only inside ``runtime.cwd``.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _StaticPETInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="3D or 4D PET")
    sidecar = traits.Dict(mandatory=True, desc="PET JSON sidecar (frame timing)")
    tracer = traits.Str("FBP", usedefault=True)


class _StaticPETOutputSpec(TraitedSpec):
    static_pet = File(exists=True, desc="realigned, duration-weighted average of the static window")
    motion_tsv = File(exists=True, desc="per-frame displacement (mm)")
    note = traits.Str(desc="what was done, for the sidecar")


class StaticPET(SimpleInterface):
    """Realign the static-window frames and average them (:func:`synthquant.pet.make_static_pet`)."""

    input_spec = _StaticPETInputSpec
    output_spec = _StaticPETOutputSpec

    def _run_interface(self, runtime):
        from synthquant.pet import make_static_pet

        result = make_static_pet(self.inputs.pet, self.inputs.sidecar, runtime.cwd, tracer=self.inputs.tracer)
        self._results.update({k: result[k] for k in ("static_pet", "motion_tsv", "note")})
        return runtime


class _NormalizeInputSpec(BaseInterfaceInputSpec):
    t1w = File(exists=True, mandatory=True, desc="whole-head T1w (real or pseudo)")
    resolution = traits.Float(1.0, usedefault=True, desc="template voxel size (mm) for SyN")


class _NormalizeOutputSpec(TraitedSpec):
    t1w_brain = File(exists=True)
    brain_mask = File(exists=True)
    t1w_template = File(exists=True)
    transforms = OutputMultiObject(File(exists=True), desc="native -> template (ANTs order)")
    inverse_transforms = OutputMultiObject(File(exists=True), desc="template -> native (ANTs order)")
    inverse_invert = traits.List(traits.Bool, desc="whether each inverse transform is applied inverted")


class NormalizeToTemplate(SimpleInterface):
    """Skull-strip, N4 and SyN a T1w onto MNI152 2009a (:func:`synthquant.registration.normalize_to_template`)."""

    input_spec = _NormalizeInputSpec
    output_spec = _NormalizeOutputSpec

    def _run_interface(self, runtime):
        from synthquant.registration import normalize_to_template

        result = normalize_to_template(self.inputs.t1w, runtime.cwd, resolution=self.inputs.resolution)
        self._results.update(t1w_brain=str(result.t1w_brain), brain_mask=str(result.brain_mask),
                             t1w_template=str(result.t1w_template), transforms=[str(t) for t in result.transforms],
                             inverse_transforms=[str(t) for t, _ in result.inverse_transforms],
                             inverse_invert=[invert for _, invert in result.inverse_transforms])
        return runtime


class _RigidInputSpec(BaseInterfaceInputSpec):
    fixed = File(exists=True, mandatory=True)
    moving = File(exists=True, mandatory=True)


class _RigidOutputSpec(TraitedSpec):
    transform = File(exists=True, desc="moving -> fixed rigid transform (ITK)")


class RigidCoregistration(SimpleInterface):
    """Rigid mutual-information coregistration (:func:`synthquant.registration.rigid_register`)."""

    input_spec = _RigidInputSpec
    output_spec = _RigidOutputSpec

    def _run_interface(self, runtime):
        from synthquant.registration import rigid_register

        self._results["transform"] = str(rigid_register(self.inputs.fixed, self.inputs.moving, runtime.cwd))
        return runtime


class _ToTemplateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    transforms = InputMultiObject(File(exists=True), mandatory=True, desc="ANTs order: last applied first")


class _ToTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ToTemplate(SimpleInterface):
    """Resample a native image onto the 2 mm working template grid (:func:`synthquant.registration.to_template`)."""

    input_spec = _ToTemplateInputSpec
    output_spec = _ToTemplateOutputSpec

    def _run_interface(self, runtime):
        from synthquant.registration import to_template

        out = Path(runtime.cwd) / "in_template.nii.gz"
        self._results["out_file"] = str(to_template(self.inputs.in_file, self.inputs.transforms, out))
        return runtime


class _QuantifyInputSpec(BaseInterfaceInputSpec):
    pet_template = File(exists=True, mandatory=True, desc="static PET on the working template grid")
    tracer = traits.Str("FBP", usedefault=True)
    centiloid_equation = traits.Str("", usedefault=True, desc="'SLOPE,INTERCEPT' for tracers other than FBP")


class _QuantifyOutputSpec(TraitedSpec):
    suvr_map = File(exists=True)
    suvr_table = File(exists=True)
    metadata = traits.Dict(desc="reference value and Centiloid equation, for the sidecars")


class QuantifySUVR(SimpleInterface):
    """SUVR map, regional SUVR and Centiloid (:mod:`synthquant.quantify`)."""

    input_spec = _QuantifyInputSpec
    output_spec = _QuantifyOutputSpec

    def _run_interface(self, runtime):
        from synthquant.quantify import quantify_static_pet

        result = quantify_static_pet(self.inputs.pet_template, runtime.cwd, tracer=self.inputs.tracer,
                                     centiloid_equation=self.inputs.centiloid_equation or None)
        self._results.update(result)
        return runtime


class _ReportInputSpec(BaseInterfaceInputSpec):
    subject_key = traits.Str(mandatory=True, desc="sub-<L>[_ses-<S>]")
    site = traits.Str("n/a", usedefault=True)
    tracer = traits.Str("FBP", usedefault=True)
    methods = traits.List(traits.Str, mandatory=True)
    suvr_maps = InputMultiObject(File(exists=True), mandatory=True, desc="one per method")
    t1w_templates = InputMultiObject(File(exists=True), mandatory=True,
                                     desc="one per method; mr's (real) and synthmr's (pseudo) also side by side")
    suvr_tables = InputMultiObject(File(exists=True), mandatory=True, desc="one per method")
    metadata = traits.List(traits.Dict, mandatory=True, desc="one per method")
    notes = traits.List(traits.Str, usedefault=True)


class ReportOutputSpec(TraitedSpec):
    """An HTML report and its figures (every report interface)."""

    html = File(exists=True)
    figures = OutputMultiObject(File(exists=True))


class AmyloidReport(SimpleInterface):
    """Render the per-subject HTML report (:func:`synthquant.reports.amyloid.render_amyloid_report`)."""

    input_spec = _ReportInputSpec
    output_spec = ReportOutputSpec

    def _run_interface(self, runtime):
        from synthquant.reports.amyloid import render_amyloid_report

        result = render_amyloid_report(
            subject_key=self.inputs.subject_key, site=self.inputs.site, tracer=self.inputs.tracer,
            methods=list(self.inputs.methods), suvr_maps=list(self.inputs.suvr_maps),
            t1w_templates=list(self.inputs.t1w_templates), suvr_tables=list(self.inputs.suvr_tables),
            metadata=list(self.inputs.metadata), notes=list(self.inputs.notes), out_dir=runtime.cwd)
        self._results.update(result)
        return runtime
