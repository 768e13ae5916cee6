"""MoE expert-offloading artifact: routing workloads, strategies, a calibrated simulator and a real engine."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``artifact.offload``: the one entry point a user needs, loaded on first use. Resolved by name so that the
    package root, the bottom layer, imports nothing above it (the engine pulls in torch and transformers)."""
    if name == "offload":
        import importlib

        return importlib.import_module("artifact.engine.offload").offload
    raise AttributeError(f"module 'artifact' has no attribute {name!r}")
