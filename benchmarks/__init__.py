"""Side-by-side benchmarks against peers measured in the same run (never timed in tests)."""
