"""Greedy evaluation rollouts, generic over environments and learners.

A *policy* maps a batch of observations ``(E, A, ...)`` to actions ``(E, A)`` int32 (e.g.
``lambda obs: dqn.greedy_action(network, params, obs)``). Episodes start from given states (an
env's :meth:`~jaxmed.envs.base.Environment.eval_states`), run without auto-reset, and freeze once
``terminated | truncated``: the final state is the state the episode ended in.

Without a ``record`` the rollout is a ``lax.while_loop`` that stops as soon as every episode has
ended (a greedy search usually stops by oscillating long before ``max_steps``); with one it is a
``lax.scan`` of fixed length (the record has one entry per step). Both give the same final states.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def greedy_rollout(policy: Callable, env, env_params, bank, states, max_steps: int | None = None,
                   record: Callable[[Any], Any] | None = None) -> dict:
    """Run ``policy`` from ``states`` (leading axis ``E``) for up to ``max_steps`` steps.

    Args:
      policy: ``obs (E, A, ...) -> actions (E, A)``.
      max_steps: default ``env_params.max_steps`` (must be concrete).
      record: optional ``state -> pytree`` stored after every step (e.g. agent positions).
    Returns:
      ``{"metrics": {name: (E, A)}`` (:meth:`eval_metrics` of the final states), ``"final_state"``,
      ``"steps"`` ``(E,)`` int32 (steps until the episode ended, ``max_steps`` if it never did),
      ``"reward"`` ``(E, A)`` (summed), and ``"record"`` (leaves ``(T + 1, E, ...)``, the first
      entry from the start states) when ``record`` is given}.
    """
    max_steps = int(env_params.max_steps) if max_steps is None else int(max_steps)
    v_obs = jax.vmap(env.get_obs, in_axes=(0, None, None))
    v_step = jax.vmap(env.step_env, in_axes=(None, 0, 0, None, None))
    n = jax.tree.leaves(states)[0].shape[0]

    def body(carry, _):
        state, finished, total = carry
        action = policy(v_obs(state, env_params, bank)).astype(jnp.int32)
        new, reward, terminated, truncated, _ = v_step(jax.random.key(0), state, action, env_params, bank)
        keep = lambda old, nw: jnp.where(finished.reshape((-1,) + (1,) * (nw.ndim - 1)), old, nw)  # noqa: E731
        state = jax.tree.map(keep, state, new)
        total = total + jnp.where(finished[:, None], 0.0, reward.reshape(n, -1))
        finished = finished | terminated | truncated
        return (state, finished, total), (finished, record(state) if record else None)

    init = (states, jnp.zeros((n,), bool), jnp.zeros((n, env.n_agents), jnp.float32))
    if record is None:  # stop once every episode has ended
        def loop_body(carry):
            t, steps, inner = carry
            inner, (finished, _) = body(inner, None)
            return t + 1, jnp.where(finished & (steps == max_steps), t + 1, steps), inner

        def running(carry):
            t, _, (_, finished, _) = carry
            return (t < max_steps) & ~jnp.all(finished)

        steps0 = jnp.full((n,), max_steps, jnp.int32)
        _, steps, (final, finished, total) = jax.lax.while_loop(running, loop_body, (jnp.int32(0), steps0, init))
    else:
        (final, finished, total), (done, recorded) = jax.lax.scan(body, init, None, length=max_steps)
        steps = jnp.where(done.any(0), jnp.argmax(done, axis=0) + 1, max_steps).astype(jnp.int32)
    out = {
        "metrics": jax.vmap(env.eval_metrics, in_axes=(0, None, None))(final, env_params, bank),
        "final_state": final,
        "steps": steps,
        "reward": total,
    }
    if record is not None:
        out["record"] = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], axis=0), record(states), recorded)
    return out
