"""Nipype interfaces of the three MR-less baselines (Choi & Lee 2018): thin wrappers over
:mod:`synthquant.pettemplates`.

Each one's ``transforms`` output is native PET -> template in antsApplyTransforms order, the
form the ``transforms`` input of :class:`synthquant.interfaces.amyloid.ToTemplate` takes.
``_run_interface`` imports its function lazily (antspyx stays out of graph building) and
writes only inside ``runtime.cwd``.
"""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _PETTemplateRegistrationInputSpec(BaseInterfaceInputSpec):
    static_pet = File(exists=True, mandatory=True, desc="native static PET")
    template = File(exists=True, mandatory=True, desc="PET template in template space (SUVR)")
    resolution = traits.Float(2.0, usedefault=True, desc="SyN grid (mm), no finer than the template's voxels")


class _RegistrationOutputSpec(TraitedSpec):
    transforms = OutputMultiObject(File(exists=True), desc="native -> template (ANTs order: warp, affine)")
    warped = File(exists=True, desc="the moving image in template space")


class PETTemplateRegistration(SimpleInterface):
    """Affine + SyN of a static PET onto a PET template
    (:func:`synthquant.pettemplates.register_pet_to_pet_template`): methods ``pettemplate``
    and, after :class:`SelectPETTemplate`, ``multiatlas``."""

    input_spec = _PETTemplateRegistrationInputSpec
    output_spec = _RegistrationOutputSpec

    def _run_interface(self, runtime):
        from synthquant.pettemplates import register_pet_to_pet_template

        result = register_pet_to_pet_template(self.inputs.static_pet, self.inputs.template, runtime.cwd,
                                              resolution=self.inputs.resolution)
        self._results.update(transforms=[str(t) for t in result.transforms], warped=str(result.warped))
        return runtime


class _SelectInputSpec(BaseInterfaceInputSpec):
    static_pet = File(exists=True, mandatory=True, desc="native static PET")
    templates = InputMultiObject(File(exists=True), mandatory=True, desc="multiatlas PET templates")


class _SelectOutputSpec(TraitedSpec):
    template = File(exists=True, desc="the most similar template")
    index = traits.Int(desc="its position in the input list (0-based)")
    scores = traits.List(traits.Float, desc="normalised cross-correlation with each template")


class SelectPETTemplate(SimpleInterface):
    """Pick the most similar of several PET templates, by normalised cross-correlation after an
    affine step (:func:`synthquant.pettemplates.select_template`): method ``multiatlas``."""

    input_spec = _SelectInputSpec
    output_spec = _SelectOutputSpec

    def _run_interface(self, runtime):
        from synthquant.pettemplates import select_template

        templates = list(self.inputs.templates)
        index, scores = select_template(self.inputs.static_pet, templates, out_dir=runtime.cwd)
        self._results.update(template=templates[index], index=index, scores=[float(s) for s in scores])
        return runtime


class _PETSegmentationInputSpec(BaseInterfaceInputSpec):
    static_pet = File(exists=True, mandatory=True, desc="native static PET")


class _PETSegmentationOutputSpec(TraitedSpec):
    gm = File(exists=True, desc="grey-matter probability, PET grid")
    wm = File(exists=True, desc="white-matter probability, PET grid")
    csf = File(exists=True, desc="CSF probability, PET grid")
    brain_mask = File(exists=True, desc="intracranial mask the classes were fitted in")
    class_means = traits.List(traits.Float, desc="mean uptake of CSF, GM and WM classes")


class PETSegmentation(SimpleInterface):
    """Three-class Atropos segmentation of the PET itself
    (:func:`synthquant.pettemplates.segment_pet`): method ``petseg``."""

    input_spec = _PETSegmentationInputSpec
    output_spec = _PETSegmentationOutputSpec

    def _run_interface(self, runtime):
        from synthquant.pettemplates import segment_pet

        self._results.update(segment_pet(self.inputs.static_pet, runtime.cwd))
        return runtime


class _SegmentationRegistrationInputSpec(BaseInterfaceInputSpec):
    gm = File(exists=True, mandatory=True, desc="grey-matter probability (native PET grid)")
    wm = File(exists=True, mandatory=True, desc="white-matter probability (native PET grid)")
    resolution = traits.Float(2.0, usedefault=True, desc="template voxel size (mm) for SyN")


class SegmentationRegistration(SimpleInterface):
    """Register PET-derived GM/WM maps to the template GM/WM priors
    (:func:`synthquant.pettemplates.register_pet_segmentation`): method ``petseg``; the PET
    follows the transforms."""

    input_spec = _SegmentationRegistrationInputSpec
    output_spec = _RegistrationOutputSpec

    def _run_interface(self, runtime):
        from synthquant.pettemplates import register_pet_segmentation

        result = register_pet_segmentation(self.inputs.gm, self.inputs.wm, runtime.cwd,
                                           resolution=self.inputs.resolution)
        self._results.update(transforms=[str(t) for t in result.transforms], warped=str(result.warped))
        return runtime
