"""The actor <-> learner bridge: wire schema, ZMQ transport with CURVE, keys, spool."""
