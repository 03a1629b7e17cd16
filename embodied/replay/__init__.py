"""Replay as one storage plus samplers over it (TorchRL's split, small files).

- :class:`Replay` (:mod:`.storage`): circular columns, pixels stored once, episode links,
  reward labels, extras columns, checkpoints. ``Replay.sample`` draws n-step transitions.
- :class:`NStepSampler` and :class:`MixedReplay` (:mod:`.nstep`): n-step TD batches, RLPD mixing.
- :class:`SequenceSampler` (:mod:`.sequence`): windows of consecutive steps for world models.
- :func:`recent_episode_pairs` (:mod:`.pairs`): preference pairs for RL-VLM-F.
- :class:`RolloutBuffer`, :func:`gae`, :class:`RolloutCollector` (:mod:`.rollout`): PPO's on-policy (T, N)
  rollouts, filled from the Driver's transitions with the labels of the storage.
"""

from embodied.replay.nstep import MixedReplay, NStepSampler, to_torch, tree_to_torch
from embodied.replay.pairs import episodes_newest_first, recent_episode_pairs
from embodied.replay.rollout import RolloutBuffer, RolloutCollector, gae
from embodied.replay.sequence import SequenceSampler
from embodied.replay.storage import Replay

__all__ = ["MixedReplay", "NStepSampler", "Replay", "RolloutBuffer", "RolloutCollector", "SequenceSampler", "episodes_newest_first",
           "gae", "recent_episode_pairs", "to_torch", "tree_to_torch"]
