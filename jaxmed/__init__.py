"""jaxmed: reinforcement learning on 3D medical images, in JAX."""

from jaxmed.errors import JaxmedError
from jaxmed.envs.registry import make

__version__ = "0.1.0"

__all__ = ["JaxmedError", "make", "__version__"]
