"""Training: optimizer and freezing, train state, the jitted step, checkpoints, the loop."""
