"""Raw text -> deduplicated, tokenized, counted Megatron shards -> data signature."""
