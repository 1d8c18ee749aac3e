"""jaxmed: reinforcement learning on 3D medical images, in JAX."""

from jaxmed.envs.registry import make
from jaxmed.errors import JaxmedError

__version__ = "0.1.0"

__all__ = ["JaxmedError", "make", "__version__"]
