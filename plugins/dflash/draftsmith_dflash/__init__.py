"""draftsmith-dflash: DFlash block-diffusion draft models, objective and drafting for draftsmith."""

__version__ = "0.1.0"
