"""real_robot package of embodied-rl."""
