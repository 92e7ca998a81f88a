"""Tiny draft and objective options per first-party method for the coverage matrix (4-layer, vocab-128 targets;
the mask token is the last id, never pad 0 / eos 2)."""

DRAFT_OPTIONS = {"eagle1": {}, "eagle3": {},
                 "dflash": {"mask_token_id": 127, "num_draft_layers": 1, "block_size": 8},
                 # explicit ids: DSpark's default rule (NeMo's) ends at the last layer, which no engine captures
                 "dspark": {"mask_token_id": 127, "num_draft_layers": 1, "block_size": 6, "markov_rank": 16,
                            "target_layer_ids": [1, 2]}}
OBJECTIVE_OPTIONS = {"eagle1": {}, "eagle3": {"ttt_steps": 4}, "dflash": {"num_anchors": 16},
                     "dspark": {"num_anchors": 16}}
METHODS = tuple(DRAFT_OPTIONS)
