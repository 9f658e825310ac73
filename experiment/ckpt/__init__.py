"""Hugging Face <-> Megatron-Core checkpoint conversion and the logits check."""
