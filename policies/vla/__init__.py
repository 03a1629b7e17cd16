"""Vision-language-action policies: instruction + camera images (+ state) -> actions.

One interface, what every VLA here implements (besides :class:`embodied.Policy`):

- ``step(obs)`` with ``obs = {"pixels": {cam: (B, H, W, 3) uint8}, "state": (B, D),
  "instruction": [str] * B}`` -> actions (``(B, A)``, or ``(B, K, A)`` chunks that the
  project's chunk executor plays with a queue per env), the log-probability of what was
  sampled, ``V(s)`` from the value head, and the action tokens in ``extras["tokens"]``;
- the token-policy surface PPO fine-tunes (``features``, ``dist_params``, ``log_prob``,
  ``entropy``, ``sample``, ``value_of``, ``to_action``, ``tokens_of``; see
  :mod:`policies.ppo`), with the sampling temperature inside ``dist_params``;
- ``spec()`` (JSON) + ``state_dict()`` rebuild it, its normalisation included.

Implementations:

- :class:`policies.vla.native.NativeVLA` (kind ``native_vla``), the small VLA that trains
  on a CPU (``learner=vla`` behaviour-clones it, ``+experiment=ppo_vla policy=<it>``
  fine-tunes it with PPO);
- :class:`policies.vla.autoregressive.AutoregressiveVLA` (kind ``autoregressive_vla``),
  OpenVLA-style token VLAs over any transformers causal / image-text-to-text model;
- LeRobot's SmolVLA / pi0 through :class:`policies.lerobot_policy.LeRobotPolicy`, with
  flow-SDE log-probabilities in :mod:`policies.vla.flow_sde`.
"""

from policies.vla.tokenizer import ActionTokenizer

__all__ = ["ActionTokenizer"]
