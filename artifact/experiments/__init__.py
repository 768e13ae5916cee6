"""Experiment grids (E1 to E7 of the design) and the resumable runner."""
