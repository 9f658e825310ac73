"""Model description and construction shared by training and checkpoint conversion: presets, GPTModel build, parallel state."""
