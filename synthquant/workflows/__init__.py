"""Nipype graphs only: ``init_*_wf`` factories that wire interfaces."""
