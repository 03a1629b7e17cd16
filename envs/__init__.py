"""envs package of embodied-rl."""
