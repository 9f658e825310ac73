"""data_ratio.json + lang_prob.json + excludes + budget -> per-shard Megatron weights."""
