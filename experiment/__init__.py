"""midtrain-kit: one training folder describes a continual-pretraining run; the kit runs and reproduces it."""

__version__ = "0.1.0"
