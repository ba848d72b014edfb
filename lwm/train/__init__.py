"""Training: loss arithmetic, the training step and loop."""
