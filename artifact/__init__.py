"""MoE expert-offloading artifact: routing workloads, strategies, a calibrated simulator and a real engine."""

__version__ = "0.1.0"
