"""Pure, jitted, vmappable environments and the registry (``jaxmed.make``).

Every environment follows :class:`jaxmed.envs.base.Environment`: ``reset(key, params, bank) ->
(obs, state)`` and ``step(key, state, action, params, bank) -> (obs, state, reward, terminated,
truncated, info)`` with auto-reset.
"""

from jaxmed.envs.base import Box, Discrete, Environment
from jaxmed.envs.box import BoxEnv, BoxEnvConfig, BoxEnvParams
from jaxmed.envs.corner_pair import CornerPairConfig, CornerPairEnv, CornerPairParams
from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv
from jaxmed.envs.goal_plane import GoalPlaneConfig, GoalPlaneEnv
from jaxmed.envs.landmark import EnvParams, EnvState, LandmarkEnv, LandmarkEnvConfig, ObsState
from jaxmed.envs.plane import PlaneEnv, PlaneEnvConfig
from jaxmed.envs.registration import RegistrationEnv, RegistrationEnvConfig
from jaxmed.envs.registry import make, register, registered

__all__ = [
    "Box",
    "BoxEnv",
    "BoxEnvConfig",
    "BoxEnvParams",
    "CornerPairConfig",
    "CornerPairEnv",
    "CornerPairParams",
    "Discrete",
    "EnvParams",
    "EnvState",
    "Environment",
    "GoalLandmarkConfig",
    "GoalLandmarkEnv",
    "GoalPlaneConfig",
    "GoalPlaneEnv",
    "LandmarkEnv",
    "LandmarkEnvConfig",
    "ObsState",
    "PlaneEnv",
    "PlaneEnvConfig",
    "RegistrationEnv",
    "RegistrationEnvConfig",
    "make",
    "register",
    "registered",
]
