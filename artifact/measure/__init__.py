"""Measurement: timing of device work (``timers``), what a measurement ran on (``environment``), and the calibration
of a hardware profile from the engine's own kernels (``calibrate``)."""
