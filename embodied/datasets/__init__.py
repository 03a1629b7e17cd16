"""LeRobotDatasets in and out: recording episodes, reading them back, filling a replay.

``from embodied.datasets import DatasetRecorder, open_dataset, load_replay`` — LeRobot is
imported only when a dataset is actually created or opened.
"""

from embodied.datasets.read import Episode, episode_transitions, iter_episodes, load_replay, open_dataset, read_episode
from embodied.datasets.record import DatasetRecorder

__all__ = ["DatasetRecorder", "Episode", "episode_transitions", "iter_episodes", "load_replay", "open_dataset",
           "read_episode"]
