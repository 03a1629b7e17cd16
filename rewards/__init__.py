"""rewards package of embodied-rl."""
