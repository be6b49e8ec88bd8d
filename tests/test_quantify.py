"""Regional SUVR and Centiloid against independent computations on known maps."""

import numpy as np
import pytest

from synthquant import atlases
from synthquant.errors import InputError
from synthquant.quantify import FBP_CENTILOID, parse_centiloid_equation, regional_suvr, suvr_map


@pytest.fixture(scope="module")
def masks():
    return atlases.region_masks()


def test_piecewise_constant_uptake_gives_exact_suvr(masks):
    shape = atlases.working_grid().shape
    pet = np.full(shape, 3.0, np.float32)            # everywhere else
    pet[masks["cerebellar_gm"]] = 2.0                 # reference
    pet[masks["frontal"]] = 3.2                       # SUVR 1.6
    pet[masks["lateral_temporal"]] = 2.8              # SUVR 1.4
    suvr, reference = suvr_map(pet, masks)
    assert reference == pytest.approx(2.0)
    table = regional_suvr(suvr, masks).set_index("region")
    assert table.loc["frontal", "suvr"] == pytest.approx(1.6, abs=1e-6)
    assert table.loc["lateral_temporal", "suvr"] == pytest.approx(1.4, abs=1e-6)
    # Composite = voxel-weighted mean over the union (independent computation).
    expected = suvr[masks["composite"]].mean()
    assert table.loc["composite", "suvr"] == pytest.approx(expected, abs=1e-6)
    assert table.loc["composite", "n_voxels"] == masks["composite"].sum()
    assert np.isnan(table.loc["frontal", "centiloid"])


def test_centiloid_follows_navitsky_equation(masks):
    shape = atlases.working_grid().shape
    pet = np.ones(shape, np.float32)
    pet[masks["centiloid_ctx"]] = 1.5
    table = regional_suvr(pet, masks).set_index("region")
    # ctx/WhlCbl = 1.5 where the VOIs do not overlap: CL = 175.4 * 1.5 - 182.3 = 80.8.
    overlap = (masks["centiloid_ctx"] & masks["centiloid_WhlCbl"]).sum()
    assert overlap == 0
    assert table.loc["composite", "centiloid"] == pytest.approx(80.8, abs=1e-3)
    assert FBP_CENTILOID(1.0) == pytest.approx(-6.9)


def test_table_lists_summary_regions_then_every_aal2_label(masks):
    table = regional_suvr(np.ones(atlases.working_grid().shape, np.float32), masks)
    assert list(table["region"][:5]) == ["composite", "frontal", "cingulate", "superior_parietal",
                                         "lateral_temporal"]
    assert len(table) == 5 + len(atlases.aal2_table())
    assert list(table.columns) == ["region", "suvr", "centiloid", "n_voxels"]


def test_zero_reference_is_refused(masks):
    with pytest.raises(InputError, match="reference region"):
        suvr_map(np.zeros(atlases.working_grid().shape, np.float32), masks)


def test_user_centiloid_equation_is_parsed():
    equation = parse_centiloid_equation("100,-100", "FBB")
    assert equation(1.5) == pytest.approx(50.0)
    with pytest.raises(InputError, match="SLOPE,INTERCEPT"):
        parse_centiloid_equation("steep", "FBB")
