"""The ``network:`` config section, checked as typed dataclasses (:func:`jaxmed.config.build`).

``trunk`` and ``head`` are a name or ``{"name": ..., **options}``; every option is a field of the
flax module it configures (:data:`jaxmed.networks.trunks.TRUNKS`, :data:`jaxmed.networks.heads.HEADS`,
the actor-critic head) and is type-checked against that field, so a bad value names its key, e.g.
``network.trunk.width: expected a number, got 'a'``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from jaxmed.config import build, coerce
from jaxmed.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: Module fields set by the network itself, never by config options.
RESERVED = ("parent", "name", "dtype", "n_actions", "comm_axis")


def name_and_options(kind: str, value) -> tuple[str, dict]:
    """``(name, options)`` of a ``trunk`` / ``head`` entry: a name or a mapping with a ``name`` key."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and "name" in value:
        options = dict(value)
        return options.pop("name"), options
    raise ConfigError(f"network config: {kind} must be a name or a mapping with a 'name' key, got {value!r}")


def lookup(kind: str, name: str, registry: Mapping[str, type], options: Optional[Mapping], where: str = "network"):
    """``(class, options)`` for ``registry[name]`` with every option checked against the type of the
    module field of that name (:func:`jaxmed.config.coerce`); :class:`ConfigError` on unknown names,
    unknown options or wrong types."""
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}")
    cls = registry[name]
    options = dict(options or {})
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in RESERVED]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{kind} {name!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    return cls, {k: coerce(v, hints[k], f"{where}.{kind}.{k}") for k, v in options.items()}


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The ``network:`` section.

    Attributes:
      trunk: trunk name or ``{"name": ..., **options}`` (``"patch"``, ``"strided"``, ``"network3d"``).
      head: ``"q"`` / ``"dueling"`` (value learners) or ``"actor_critic"`` (policy-gradient learners),
        or a mapping with options (``hidden``); ``None``: the learner's default.
      n_actions: action outputs per agent (set from the env by :func:`jaxmed.experiment.make_network`).
      dtype: compute dtype, ``"float32"`` or ``"bfloat16"``.
      n_agents: agents in one network (one head each); ``None``: a single-agent network.
      share_trunk, communication: multi-agent options (Collab-DQN / CommNet), only with ``n_agents``.
      crop_size: observation edge ``D`` or ``(X, Y, Z)``, checked against the trunk when given.
    """

    trunk: Any = "patch"
    head: Any = None
    n_actions: int = 6
    dtype: str = "float32"
    n_agents: Optional[int] = None
    share_trunk: Optional[bool] = None
    communication: Optional[bool] = None
    crop_size: Any = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"network config: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("n_actions", "n_agents"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"network config: {name} must be a positive int, got {v!r}")

    @staticmethod
    def parse(cfg: Mapping[str, Any] | None, where: str = "network") -> "NetworkConfig":
        """:func:`jaxmed.config.build` of a ``network:`` mapping (unknown keys name the allowed ones)."""
        try:
            return build(NetworkConfig, cfg, where)
        except ConfigError as e:
            raise ConfigError(str(e).replace(f"{where}: unknown key(s)", "network config: unknown key(s)")) from None

    def trunk_spec(self, where: str = "network") -> tuple[str, dict]:
        """``(trunk name, checked options)``."""
        from jaxmed.networks.trunks import TRUNKS

        name, options = name_and_options("trunk", self.trunk)
        return name, lookup("trunk", name, TRUNKS, options, where)[1]

    def head_spec(self, default: str, registry: Mapping[str, type], where: str = "network") -> tuple[str, dict]:
        """``(head name, checked options)``; a mapping without ``name`` (or ``None``) means ``default``."""
        head = default if self.head is None else self.head
        if isinstance(head, Mapping) and "name" not in head:
            head = {"name": default, **head}
        name, options = name_and_options("head", head)
        return name, lookup("head", name, registry, options, where)[1]

    def agent_options(self) -> dict:
        """``n_agents``, ``share_trunk`` (default true) and ``communication`` (default false) of a multi-agent
        network (:class:`ConfigError` for the multi-agent options without ``n_agents``, which
        :func:`jaxmed.experiment.make_network` sets from a multi-agent env)."""
        if self.n_agents is None:
            stray = [k for k in ("share_trunk", "communication") if getattr(self, k) is not None]
            if stray:
                raise ConfigError(f"network config: {stray} need n_agents")
            return {}
        return dict(n_agents=self.n_agents, share_trunk=True if self.share_trunk is None else bool(self.share_trunk),
                    communication=bool(self.communication))

    def check(self, where: str = "network") -> "NetworkConfig":
        """Check the trunk and head names and options (the head against every head kind); returns self."""
        from jaxmed.networks.heads import ACTOR_CRITIC_HEADS, HEAD_NAME, HEADS

        self.trunk_spec(where)
        heads = {**HEADS, **ACTOR_CRITIC_HEADS}
        default = "q" if self.head is None or not isinstance(self.head, Mapping) or "name" in self.head else HEAD_NAME
        self.head_spec(default, heads, where)
        return self

    def finish(self, net):
        """Validate a built network's head and trunk (and ``crop_size`` when given); returns it."""
        net._head()
        if self.crop_size is not None:
            net.check_input(self.crop_size)
        else:
            net._trunk()
        return net
