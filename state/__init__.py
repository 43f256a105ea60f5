"""The Redis side: key layout, batched writes of user state, catalogue and model checkpoints."""
