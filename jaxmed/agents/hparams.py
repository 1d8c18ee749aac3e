"""Hyperparameters as pytree leaves of a learner's runner state (shared by DQN, A2C, PPO, GRPO).

A learner that supports vmapped hyperparameter settings keeps its numeric hyperparameters in a
``struct.dataclass`` of scalars (``Hparams``) inside its runner state and reads them from there in
its update, instead of closing over the config's Python floats. One compiled program then trains a
population: ``jax.vmap(fns.init, in_axes=(0, None, 0))(keys, bank, stack_hparams([...]))`` gives a
runner state with a leading population axis ``P`` and ``jax.vmap(fns.run_chunk, in_axes=(0, None))``
trains every member with its own values (``jaxmed sweep``, ``train.seeds``).

Each learner module exposes ``Hparams``, ``HPARAM_FIELDS`` (the config fields that are leaves),
``default_hparams(config, **overrides)`` (built with :func:`hparams_from_config`) and
``stack_hparams`` (this module's). Everything else in the config (shapes, batch sizes, switches
such as ``double`` or ``normalize_advantages``, the decay horizon ``lr_decay_steps``) stays static.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmed.errors import ConfigError


def hparam_fields(cls) -> tuple[str, ...]:
    """The field names of an ``Hparams`` dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def hparams_from_config(cls, config, overrides: dict, int_fields=(), validate: bool = True):
    """An ``Hparams`` ``cls`` of scalars (float32; int32 for ``int_fields``) holding ``config``'s values
    of the fields of ``cls``, with ``overrides`` (field -> number) applied.

    An override that is not a field of ``cls`` raises :class:`ConfigError` listing the sweepable ones.
    With ``validate`` the overrides go through ``dataclasses.replace(config, ...)``, so the config's own
    range checks (``__post_init__``) reject a bad value with the same message as in a YAML file.
    """
    fields = hparam_fields(cls)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"not {type(config).__name__} hyperparameter leaves: {unknown}; sweepable: {', '.join(fields)}")
    if validate and overrides:
        config = dataclasses.replace(config, **overrides)
        values = {f: getattr(config, f) for f in fields}
    else:
        values = {f: overrides.get(f, getattr(config, f)) for f in fields}
    return cls(**{f: jnp.asarray(v, jnp.int32 if f in int_fields else jnp.float32) for f, v in values.items()})


def stack_hparams(hps):
    """A population ``(P,)`` of hyperparameters from a sequence of scalar ``Hparams`` (any learner's)."""
    if not hps:
        raise ConfigError("stack_hparams needs at least one Hparams")
    return jax.tree.map(lambda *x: jnp.stack(x), *hps)


def learner_hparams(cls, int_fields=(), validate: bool = True):
    """``(HPARAM_FIELDS, default_hparams, stack_hparams)`` of a learner whose hyperparameter leaves are
    the dataclass ``cls``: the leaf names, ``default_hparams(config, **overrides) -> cls`` (the config's
    values with ``overrides`` applied, :func:`hparams_from_config`) and :func:`stack_hparams`."""

    def default_hparams(config, **overrides):
        return hparams_from_config(cls, config, overrides, int_fields, validate)

    default_hparams.__doc__ = (f"The config's hyperparameters as a :class:`{cls.__module__}.{cls.__qualname__}` of scalars, "
                               "with ``overrides`` applied.")
    return hparam_fields(cls), default_hparams, stack_hparams


def member_rows(hparams: dict, members: int) -> list[dict]:
    """``members`` dicts of hyperparameter overrides, one per vmapped member, from ``{field: value or
    [value per member]}`` (``train.hparams``: a single value applies to every member)."""
    return [{k: (v[i] if isinstance(v, (list, tuple)) else v) for k, v in hparams.items()} for i in range(members)]
