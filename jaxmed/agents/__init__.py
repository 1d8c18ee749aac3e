"""Learners (DQN family, Collab-DQN, ...), the device replay buffer and evaluation."""

from jaxmed.agents.replay import BufferState, ReplayBuffer, bytes_per_transition

__all__ = ["BufferState", "ReplayBuffer", "bytes_per_transition"]
