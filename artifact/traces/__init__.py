"""Routing workloads: the trace format, a calibrated synthetic generator, a recorder, statistics, workloads."""
