"""embodied-rl: reinforcement learning on robots with rewards from vision-language models.

``import embodied`` stays light: simulators, robot SDKs and VLMs are imported lazily by
the modules that need them.
"""

from embodied.contracts import Batch, EpisodeLabels, Learner, Obs, Policy, RewardModel, Transition

__all__ = ["Batch", "EpisodeLabels", "Learner", "Obs", "Policy", "RewardModel", "Transition"]
__version__ = "0.1.0"
