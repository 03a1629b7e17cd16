"""Scale-out on Ray: what outgrows one machine runs here, on a Ray cluster (never a home-made
one); the robot bridge keeps its own transport. Optional: the local commands never import Ray.

* :mod:`embodied.scale.cluster` — joining a cluster (``ray.address``), checking it has the
  resources a job asks for, checking what a job ships to workers can be shipped.
* :mod:`embodied.scale.labeling` — ``embodied-label ray.address=...``: a Ray Data pipeline
  (episodes decoded by CPU readers, labeled by an actor pool running the reward module).
"""
