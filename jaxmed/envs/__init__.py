"""Pure, jitted, vmappable environments and the registry (``jaxmed.make``).

Every environment follows :class:`jaxmed.envs.base.Environment`: ``reset(key, params, bank) ->
(obs, state)`` and ``step(key, state, action, params, bank) -> (obs, state, reward, terminated,
truncated, info)`` with auto-reset.
"""

from jaxmed.envs.base import Box, Discrete, Environment
from jaxmed.envs.landmark import EnvParams, EnvState, LandmarkEnv, LandmarkEnvConfig, ObsState
from jaxmed.envs.registration import RegistrationEnv, RegistrationEnvConfig
from jaxmed.envs.registry import make, register, registered

__all__ = [
    "Box",
    "Discrete",
    "EnvParams",
    "EnvState",
    "Environment",
    "LandmarkEnv",
    "LandmarkEnvConfig",
    "ObsState",
    "RegistrationEnv",
    "RegistrationEnvConfig",
    "make",
    "register",
    "registered",
]
