"""draftsmith-eagle: EAGLE-1/2 and EAGLE-3 draft models, objectives and drafting for draftsmith."""

__version__ = "0.1.0"
