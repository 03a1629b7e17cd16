"""Built-in MuJoCo tasks (``reach``, ``push``), designed to render fast on a CPU."""
