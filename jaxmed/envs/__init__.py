"""Pure, jitted, vmappable environments and the registry (``jaxmed.make``).

Every environment follows :class:`jaxmed.envs.base.Environment`: ``reset(key, params, bank) ->
(obs, state)`` and ``step(key, state, action, params, bank) -> (obs, state, reward, terminated,
truncated, info)`` with auto-reset.
"""

from jaxmed.envs.base import Box, Discrete, Environment
from jaxmed.envs.box import BoxConfig, BoxEnv, BoxParams, BoxState
from jaxmed.envs.corner_pair import CornerPairConfig, CornerPairEnv, CornerPairParams
from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv, GoalLandmarkState
from jaxmed.envs.goal_plane import GoalPlaneConfig, GoalPlaneEnv, GoalPlaneState
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkObsState, LandmarkParams, LandmarkState
from jaxmed.envs.plane import PlaneConfig, PlaneEnv, PlaneParams, PlaneState
from jaxmed.envs.registration import RegistrationConfig, RegistrationEnv, RegistrationParams, RegistrationState
from jaxmed.envs.registry import make, register, registered

__all__ = [
    "Box", "BoxConfig", "BoxEnv", "BoxParams", "BoxState",
    "CornerPairConfig", "CornerPairEnv", "CornerPairParams",
    "Discrete", "Environment",
    "GoalLandmarkConfig", "GoalLandmarkEnv", "GoalLandmarkState",
    "GoalPlaneConfig", "GoalPlaneEnv", "GoalPlaneState",
    "LandmarkConfig", "LandmarkEnv", "LandmarkObsState", "LandmarkParams", "LandmarkState",
    "PlaneConfig", "PlaneEnv", "PlaneParams", "PlaneState",
    "RegistrationConfig", "RegistrationEnv", "RegistrationParams", "RegistrationState",
    "make", "register", "registered",
]
