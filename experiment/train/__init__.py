"""The training runner: folder -> model, data, optimizer, checkpointer, metrics -> loop."""
