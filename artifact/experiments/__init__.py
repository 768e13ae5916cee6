"""Experiment grids (E1 to E7 of the design), the resumable runner, the engine's GPU checks and reproduce."""
