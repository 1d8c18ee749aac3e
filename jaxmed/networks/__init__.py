"""Flax (linen) Q-networks for 3D crops: trunks, heads, single- and multi-agent networks.

Input: ``k`` stacked history frames per agent, ``(..., k, D, D, D)``, any dtype (uint8 frames are
scaled by 1/255). Output: Q-values ``(..., n_actions)`` float32. See :mod:`.trunks` for the cost of
each trunk (the network, not the environment, decides the speed).
"""

from jaxmed.networks.actor_critic import ActorCritic, ActorCriticHead, MultiAgentActorCritic, actor_critic_from_config
from jaxmed.networks.config import NetworkConfig
from jaxmed.networks.heads import HEADS, DuelingHead, QHead
from jaxmed.networks.q_network import MultiAgentQNetwork, QNetwork, network_from_config
from jaxmed.networks.trunks import TRUNKS, Network3DTrunk, PatchTrunk, StridedTrunk, prepare_frames

__all__ = [
    "ActorCritic",
    "ActorCriticHead",
    "MultiAgentActorCritic",
    "actor_critic_from_config",
    "HEADS",
    "NetworkConfig",
    "TRUNKS",
    "DuelingHead",
    "MultiAgentQNetwork",
    "Network3DTrunk",
    "PatchTrunk",
    "QHead",
    "QNetwork",
    "StridedTrunk",
    "network_from_config",
    "prepare_frames",
]
