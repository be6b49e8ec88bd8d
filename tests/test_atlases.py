"""Atlases come from installed packages and land on the working grid intact."""

import nibabel as nib
import numpy as np

from synthquant import atlases
from synthquant.atlases.regions import COMPOSITE_REGIONS, composite_label_names


def test_template_grids_share_field_of_view():
    one, two = atlases.template_grid(1.0), atlases.template_grid(2.0)
    assert one.shape == (197, 233, 189)  # nilearn's 1 mm MNI152 2009a grid
    assert two.shape == (99, 117, 95)
    np.testing.assert_allclose(one.affine[:3, 3], two.affine[:3, 3])


def test_centiloid_vois_keep_their_voxel_counts():
    # The GAAIN 2 mm VOIs sit on a grid aligned with ours (even-mm origins): nearest-neighbour
    # resampling must keep every voxel (counts measured on the amypet files, shared NOTES.md).
    masks = atlases.region_masks()
    assert masks["centiloid_ctx"].sum() == 29328
    assert masks["centiloid_WhlCbl"].sum() == 14940


def test_composite_is_union_of_its_regions_within_grey_matter():
    masks = atlases.region_masks()
    union = np.logical_or.reduce([masks[r] for r in COMPOSITE_REGIONS])
    assert np.array_equal(masks["composite"], union)
    gm = nib.load(str(atlases.tissue_prior("gm", 2.0))).get_fdata()
    assert gm[masks["composite"]].min() >= 0.5
    for region, names in composite_label_names().items():
        assert all(masks[name].any() for name in names), region


def test_reference_is_cerebellar_grey_matter():
    masks = atlases.region_masks()
    labels = np.asarray(nib.load(str(atlases.aal2_labels())).dataobj)
    table = atlases.aal2_table()
    cerebellar = table[table["name"].str.startswith(("Cerebelum_", "Vermis_"))]["index"]
    reference = masks["cerebellar_gm"]
    assert reference.sum() > 5000
    assert np.isin(labels[reference], cerebellar).all()
    # Posterior fossa: behind y = -20 mm, and mostly inferior (the superior vermis reaches z ~ +6 mm).
    world = atlases.working_grid().affine @ np.c_[np.argwhere(reference), np.ones(reference.sum())].T
    assert world[1].max() < -20
    assert np.median(world[2]) < -20


def test_tissue_priors_are_probabilities():
    for tissue in ("gm", "wm", "csf"):
        data = nib.load(str(atlases.tissue_prior(tissue, 2.0))).get_fdata()
        assert 0 <= data.min() and data.max() <= 1.0 + 1e-6
    brain = nib.load(str(atlases.brain_mask(1.0))).get_fdata()
    assert 1.4e6 < brain.sum() < 2.2e6  # intracranial volume, mm^3
