"""Plans and their timing: the scheduler, the simulator, hardware profiles (the engine is :mod:`artifact.engine`)."""
