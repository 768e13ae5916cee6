"""Plans and their executors: the scheduler, the simulator, the engine, hardware profiles."""
