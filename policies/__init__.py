"""policies package of embodied-rl."""
