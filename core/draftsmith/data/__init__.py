"""Training data for drafts: chat JSONL → tokenised samples with assistant-only loss masks, packing, and the
offline feature cache.

Submodules: ``records`` (JSONL formats and validation), ``chat`` (templates and the assistant mask), ``samples``
(tokenised samples, truncation, drop/warn rules, token counts, eval split), ``packing``, ``dataset`` (torch
dataset and collate), ``features`` (the ``prepare-features`` cache), ``inspect`` (the loss-mask audit). This
package module imports nothing heavy.
"""
