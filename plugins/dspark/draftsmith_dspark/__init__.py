"""draftsmith-dspark: DSpark semi-autoregressive drafts (Markov + confidence heads) for draftsmith."""

__version__ = "0.1.0"
