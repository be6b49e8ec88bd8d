"""Nipype interfaces for the networks: PET -> pseudo-T1w (amyloid arm) and MTR + DTI -> PIB DVR
(myelin arm); each is a GPU node when a GPU is used."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _SynthesizeMRInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="static PET (native space)")
    model = traits.Str(mandatory=True, desc="model path without suffix (NAME.safetensors + NAME.json)")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    # Nipype's MultiProc schedules a node whose use_gpu is True on its n_gpu_procs slots;
    # the caller sets it from the device chosen before the graph is built (NOTES).
    use_gpu = traits.Bool(False, usedefault=True, desc="run in a GPU slot")
    omp_nthreads = traits.Int(1, usedefault=True)
    batch_size = traits.Int(16, usedefault=True)


class _SynthesizeMROutputSpec(TraitedSpec):
    pseudo_t1w = File(exists=True, desc="pseudo-T1w on the PET's grid, with the PET's affine")
    model_sha256 = traits.Str()
    device = traits.Str(desc="the device that ran the model")
    notes = traits.List(traits.Str, desc="sidecar notes (e.g. a PET grid far from the model's)")


class SynthesizeMR(SimpleInterface):
    """Generate a pseudo-T1w from PET (:func:`synthquant.nets.inference.synthesize_mr`)."""

    input_spec = _SynthesizeMRInputSpec
    output_spec = _SynthesizeMROutputSpec

    def _run_interface(self, runtime):
        from synthquant.nets.inference import synthesize_mr

        result = synthesize_mr(self.inputs.pet, self.inputs.model, Path(runtime.cwd) / "pseudo_t1w.nii.gz",
                               device=self.inputs.device, batch_size=self.inputs.batch_size,
                               omp_nthreads=self.inputs.omp_nthreads)
        self._results.update({key: result[key] for key in ("pseudo_t1w", "model_sha256", "device", "notes")})
        return runtime


class _SynthesizeDVRInputSpec(BaseInterfaceInputSpec):
    mtr = File(exists=True, mandatory=True, desc="MTR map (percent) on the myelin grid")
    fa = File(exists=True, mandatory=True, desc="fractional anisotropy, same grid")
    rd = File(exists=True, mandatory=True, desc="radial diffusivity (mm2/s), same grid")
    ad = File(exists=True, mandatory=True, desc="axial diffusivity (mm2/s), same grid")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask (> 0 inside), same grid")
    model = traits.Str(mandatory=True, desc="dvr_from_mri model path without suffix (NAME.safetensors + NAME.json)")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    # As SynthesizeMR: MultiProc runs a node with use_gpu=True in one of its n_gpu_procs slots.
    use_gpu = traits.Bool(False, usedefault=True, desc="run in a GPU slot")
    omp_nthreads = traits.Int(1, usedefault=True)
    saliency = traits.Bool(False, usedefault=True, desc="also write the saliency map (Wei 2019 eq. 7)")


class _SynthesizeDVROutputSpec(TraitedSpec):
    dvr = File(exists=True, desc="predicted [11C]PIB DVR on the input grid, with the input affine; 0 outside the brain")
    saliency = File(desc="saliency map (when requested)")
    model_sha256 = traits.Str()
    device = traits.Str(desc="the device that ran the model")
    notes = traits.List(traits.Str, desc="sidecar notes (sliding windows, saliency definition, phantom-only model)")


class SynthesizeDVR(SimpleInterface):
    """Predict the PIB DVR from MTR, FA, RD and AD (:func:`synthquant.nets.dvr.synthesize_dvr`)."""

    input_spec = _SynthesizeDVRInputSpec
    output_spec = _SynthesizeDVROutputSpec

    def _run_interface(self, runtime):
        from synthquant.nets.dvr import synthesize_dvr

        cwd = Path(runtime.cwd)
        result = synthesize_dvr(self.inputs.mtr, self.inputs.fa, self.inputs.rd, self.inputs.ad,
                                self.inputs.brain_mask, self.inputs.model, cwd / "dvr.nii.gz",
                                device=self.inputs.device, omp_nthreads=self.inputs.omp_nthreads,
                                saliency_out=cwd / "saliency.nii.gz" if self.inputs.saliency else None)
        self._results.update({key: result[key] for key in ("dvr", "model_sha256", "device", "notes")})
        if result["saliency"] is not None:
            self._results["saliency"] = result["saliency"]
        return runtime
