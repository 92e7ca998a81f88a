"""Method-agnostic speculative decoding and acceptance metrics (``draftsmith eval``).

* :mod:`.engine` — :class:`SpeculativeDecoder`: target + KV cache (crop / tree compaction), feature capture
  during verification, any method's :class:`~draftsmith.method.Drafter`.
* :mod:`.verify` — lossless greedy / rejection-sampling verification of chains and trees (vectorised).
* :mod:`.sampling` — the target's sampling distribution (temperature, top-k, top-p).
* :mod:`.plain` — plain target decoding, the reference for losslessness and speed.
* :mod:`.stats` — τ per round, conditional acceptance per position, drafted/accepted tokens, timings.
* :mod:`.estimate` — offline estimators (trajectory replay, analytic E[τ], α(p, q)) for the trainer.
* :mod:`.evaluate` — the eval loop shared by ``draftsmith eval`` and ``benchmarks/spec_decode.py``.
* :mod:`.prompts` — prompt files (OpenAI messages or raw text JSONL).
* :mod:`.testing` — reference drafters and tiny targets for tests.

Importing this package imports torch; the CLI imports it lazily.
"""

from .engine import DEFAULT_NUM_DRAFT_TOKENS, SpeculativeDecoder, default_num_tokens
from .plain import generate_plain
from .sampling import SamplingConfig, target_distribution
from .stats import DecodeStats, GenerationResult, RoundRecord
from .verify import DraftTree, Verification, verify_greedy, verify_sampling

__all__ = [
    "DEFAULT_NUM_DRAFT_TOKENS", "DecodeStats", "DraftTree", "GenerationResult", "RoundRecord", "SamplingConfig",
    "SpeculativeDecoder", "Verification", "default_num_tokens", "generate_plain", "target_distribution",
    "verify_greedy", "verify_sampling",
]
