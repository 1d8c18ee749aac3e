"""Test-time look-ahead search for any trained Q-network on any jaxmed environment.

In the spirit of the Monte-Carlo look-ahead inference of Sun et al. (ACCV 2018) and Hu et al.
(MedIA 2021) for registration agents: before acting, simulate where the best few actions lead, with
vmapped copies of the environment, and act on what the network thinks of the states they reach.

Search (one environment state, ``A`` agents, ``K = top_k``, ``d = depth``):

1. ``Q = network(obs)`` ``(A, n_actions)``; the ``K`` candidates of each agent are its ``K`` actions of
   highest Q, best first. Candidate ``j`` is the joint action in which every agent takes its ``j``-th
   best action (for one agent: exactly the top-k actions).
2. Each candidate is rolled out on its own copy of the state: the candidate action, then ``d - 1``
   greedy steps, with ``env.step_env`` (no auto-reset; done agents stay frozen). The environment's
   rewards are *not* used: they are computed from the ground truth, which a test-time search may not
   read.
3. Score of candidate ``j`` for agent ``i``: ``-V_i(s_end)``, where ``V_i(s) = max_a Q_i(s, a)`` is the
   network's predicted return-to-go from the state the rollout ended in, read as an estimate of the
   error left there (below) — also when the agent is done there: a finished episode's true
   return-to-go is 0, but 0 says nothing about how good the state it stopped in is, while the
   network's value of that state does (near the target every move loses, so ``V`` is lowest
   there). Each agent takes the first action of its best-scoring candidate (ties: the
   better-ranked candidate, so the greedy action wins ties).

Why ``-V(s_end)`` and not "max Q at the end of the rollout": in every jaxmed environment with a
distance-type reward (landmark, registration, view plane) the reward is the decrease of an error,
``r_t = e(s_t) - e(s_{t+1})``, so a path's return telescopes to ``e(s_0) - e(s_end)`` (for
``gamma -> 1``, ignoring clipping) and the return-to-go ``V(s)`` is a monotone estimate of the error
still left, ``e(s) - e_min``. Maximising ``V(s_end)`` would pick the candidate that ended *farthest*
from the target; the best candidate is the one whose end state has the least return left, i.e.
the smallest predicted error. A return estimate built from the network alone cannot do better:
predicting the path rewards as ``Q(s_t, a_t) - gamma V(s_{t+1})`` telescopes back to ``Q(s_0, a_0)``
along a greedy path, i.e. to the plain greedy choice. So this search only suits rewards of the
error-decrease kind; with ``depth == 0`` or ``top_k == 1`` it is exactly the greedy action.

Caveats: the search trusts the network's values of states it visits off the greedy path, which a
weakly trained network estimates worst (measured in ``benchmarks/registration_afids.py``: it can
hurt as well as help); and in coarse-to-fine environments a value at a finer level is smaller for
the same error (smaller steps collect the remaining reward more slowly), so candidates that trigger
a level switch are favoured.

Cost per decision: one forward pass for ``Q`` plus ``K * d`` environment steps and ``K * d`` forward
passes (batched over the ``K`` candidates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmed.errors import ConfigError


def _check(top_k: int, depth: int, n_actions: int) -> tuple[int, int]:
    top_k, depth = int(top_k), int(depth)
    if top_k < 1 or depth < 0:
        raise ConfigError(f"look-ahead needs top_k >= 1 and depth >= 0, got top_k={top_k}, depth={depth}")
    if top_k > n_actions:
        raise ConfigError(f"look-ahead top_k={top_k} exceeds the environment's {n_actions} actions")
    return top_k, depth


def lookahead_action(network, params, env, env_params, bank, state, top_k: int = 3, depth: int = 2) -> jax.Array:
    """The look-ahead action ``(A,)`` int32 for one (unbatched) environment state (module docstring).

    Args:
      network: a Q-network, ``network.apply(params, obs (B, A, ...)) -> (B, A, n_actions)``.
      env: any jaxmed environment (``get_obs``, ``step_env``; done agents stay frozen in ``step_env``).
      top_k: candidates per agent (static); ``1`` is the greedy action.
      depth: environment steps simulated per candidate, the candidate action included (static);
        ``0`` is the greedy action.
    """
    top_k, depth = _check(top_k, depth, env.num_actions)
    q = network.apply(params, env.get_obs(state, env_params, bank)[None])[0]  # (A, n)
    greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
    if top_k == 1 or depth == 0:
        return greedy
    candidates = jnp.argsort(-q, axis=-1)[:, :top_k].T.astype(jnp.int32)  # (K, A), best first
    copies = jax.tree.map(lambda x: jnp.broadcast_to(x, (top_k,) + jnp.shape(x)), state)
    v_step = jax.vmap(env.step_env, in_axes=(None, 0, 0, None, None))
    v_obs = jax.vmap(env.get_obs, in_axes=(0, None, None))
    key = jax.random.key(0)  # the search never uses the env's randomness

    def q_values(states):
        return network.apply(params, v_obs(states, env_params, bank))  # (K, A, n)

    states = v_step(key, copies, candidates, env_params, bank)[0]

    def body(states, _):
        action = jnp.argmax(q_values(states), axis=-1).astype(jnp.int32)
        return v_step(key, states, action, env_params, bank)[0], None

    states, _ = jax.lax.scan(body, states, None, length=depth - 1)
    score = -jnp.max(q_values(states), axis=-1)  # (K, A)
    best = jnp.argmax(score, axis=0)  # (A,), first maximum = better-ranked candidate
    return jnp.take_along_axis(candidates, best[None, :], axis=0)[0]


def lookahead_rollout(network, params, env, env_params, bank, states, top_k: int = 3, depth: int = 2, max_steps: int | None = None) -> dict:
    """Evaluate the look-ahead policy from a batch of start states (e.g. ``env.eval_states``), like
    :func:`jaxmed.agents.rollout.greedy_rollout`: no auto-reset, an episode freezes once
    ``terminated | truncated``.

    Args:
      states: a batched env state, leading axis ``E``.
      max_steps: default ``env_params.max_steps`` (concrete).

    Returns:
      ``{"metrics": env.eval_metrics of the final states, each (E, A), "final_state", "steps" (E,)
      int32 (steps until the episode ended, max_steps if it never did), "reward" (E, A) summed}``.
    """
    max_steps = int(env_params.max_steps) if max_steps is None else int(max_steps)
    _check(top_k, depth, env.num_actions)
    act = jax.vmap(lambda s: lookahead_action(network, params, env, env_params, bank, s, top_k, depth))
    v_step = jax.vmap(env.step_env, in_axes=(None, 0, 0, None, None))
    n = jax.tree.leaves(states)[0].shape[0]

    def body(carry, _):
        state, finished, total = carry
        new, reward, terminated, truncated, _ = v_step(jax.random.key(0), state, act(state), env_params, bank)
        keep = lambda old, nw: jnp.where(finished.reshape((-1,) + (1,) * (nw.ndim - 1)), old, nw)  # noqa: E731
        state = jax.tree.map(keep, state, new)
        total = total + jnp.where(finished[:, None], 0.0, reward.reshape(n, -1))
        finished = finished | terminated | truncated
        return (state, finished, total), finished

    init = (states, jnp.zeros((n,), bool), jnp.zeros((n, env.n_agents), jnp.float32))
    (final, _, total), done = jax.lax.scan(body, init, None, length=max_steps)
    return {
        "metrics": jax.vmap(env.eval_metrics, in_axes=(0, None, None))(final, env_params, bank),
        "final_state": final,
        "steps": jnp.where(done.any(0), jnp.argmax(done, axis=0) + 1, max_steps).astype(jnp.int32),
        "reward": total,
    }
