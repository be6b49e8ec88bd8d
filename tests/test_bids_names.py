"""Labels never reach the file system unchecked; derivative names follow BIDS entity order."""

from pathlib import Path

import pytest

from synthquant.bids import bids_name, clean_label, derivative_path
from synthquant.errors import InputError


@pytest.mark.parametrize("label", ["../etc", "01/../../x", "~root", "a b", "sub-", "", "01;rm"])
def test_path_characters_are_refused(label):
    with pytest.raises(InputError, match="not a BIDS label"):
        clean_label(label)


def test_sub_prefix_is_stripped():
    assert clean_label("sub-AB01") == "AB01"


def test_names_follow_entity_order():
    entities = {"desc": "mr", "space": "MNI152NLin2009aSym", "trc": "FBP", "sub": "01", "ses": None, "seg": "AAL2"}
    assert bids_name(entities, "suvr", ".tsv") == "sub-01_trc-FBP_space-MNI152NLin2009aSym_seg-AAL2_desc-mr_suvr.tsv"
    path = derivative_path(Path("/out"), {"sub": "01", "ses": "2", "trc": "FBP"}, "pet", "pet", ".nii.gz")
    assert path == Path("/out/sub-01/ses-2/pet/sub-01_ses-2_trc-FBP_pet.nii.gz")
