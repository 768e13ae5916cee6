"""Measurement: timing of device work and the spread of repeated timings (``timers``), what a measurement ran on
(``environment``), host-to-device copies the engine's way (``copies``), the calibration of a hardware profile from
the engine's own kernels (``calibrate``) and the comparison of two profiles (``compare``)."""
