"""Device replay buffer: circular insertion against a NumPy reference, sampling, state-sized transitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.agents.replay import BufferState, ReplayBuffer, bytes_per_transition

CAPACITY = 7


def _example():
    """A small mixed-dtype transition pytree (one transition, no batch axis)."""
    return {"pos": jnp.zeros((2, 3), jnp.int16), "reward": jnp.zeros((), jnp.float32),
            "flags": (jnp.zeros((2,), jnp.bool_), jnp.zeros((), jnp.int8))}


def _batch(start, n):
    """``n`` transitions whose every field encodes its serial number ``start + i``."""
    ids = np.arange(start, start + n)
    return {"pos": jnp.asarray(np.broadcast_to(ids[:, None, None], (n, 2, 3)), jnp.int16),
            "reward": jnp.asarray(ids * 0.5, jnp.float32),
            "flags": (jnp.asarray(np.broadcast_to(ids[:, None] % 2 == 1, (n, 2))),
                      jnp.asarray(ids % 100, jnp.int8))}


def _ids(data):
    """Serial numbers of stored/sampled transitions, checking that all fields agree."""
    ids = np.asarray(data["pos"][:, 0, 0]).astype(int)
    expected = {"pos": np.broadcast_to(ids[:, None, None], (len(ids), 2, 3)), "reward": ids * 0.5,
                "flags": (np.broadcast_to(ids[:, None] % 2 == 1, (len(ids), 2)), ids % 100)}
    jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), want), data, expected)
    return ids


def test_init_layout():
    state = ReplayBuffer.init(_example(), CAPACITY)
    assert state.capacity == CAPACITY
    assert state.data["pos"].shape == (CAPACITY, 2, 3) and state.data["pos"].dtype == jnp.int16
    assert state.data["flags"][0].dtype == jnp.bool_ and state.data["flags"][1].dtype == jnp.int8
    assert int(state.size) == 0 and int(state.insert_pos) == 0
    with pytest.raises(ValueError, match="positive int"):
        ReplayBuffer.init(_example(), 0)


def test_add_batch_wraps_like_numpy_reference():
    add = jax.jit(ReplayBuffer.add_batch)  # one compile per batch size
    state = ReplayBuffer.init(_example(), CAPACITY)
    ref = np.full(CAPACITY, -1)  # serial number per slot, -1 = empty
    ref_pos, ref_size, serial = 0, 0, 0
    for n in (3, 3, 3, 5, 3, 9, 5, 3):  # crosses the end, refills, and a batch larger than capacity
        state = add(state, _batch(serial, n))
        for i in range(n):  # reference: sequential insertion
            ref[ref_pos] = serial + i
            ref_pos = (ref_pos + 1) % CAPACITY
        ref_size = min(ref_size + n, CAPACITY)
        serial += n
        assert int(state.insert_pos) == ref_pos and int(state.size) == ref_size
        filled = ref >= 0
        np.testing.assert_array_equal(_ids(state.data)[filled], ref[filled])
    assert ref_size == CAPACITY  # saturated


def test_sample_uniform_from_filled_region_only():
    state = ReplayBuffer.add_batch(ReplayBuffer.init(_example(), 100), _batch(1, 10))
    sample = jax.jit(ReplayBuffer.sample, static_argnums=2)
    drawn = sample(state, jax.random.key(0, impl="rbg"), 4000)
    ids = _ids(drawn)
    assert drawn["pos"].shape == (4000, 2, 3) and drawn["flags"][1].dtype == jnp.int8
    assert set(ids) == set(range(1, 11))  # every filled slot, never an empty (id 0) one
    counts = np.bincount(ids, minlength=11)[1:]
    assert counts.min() > 300 and counts.max() < 500  # ~400 each


def test_jitted_training_loop_usage():
    """add + sample inside one jitted scan, as a learner uses it (no vmap)."""

    def step(carry, t):
        state, key = carry
        key, sub = jax.random.split(key)
        transitions = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (2,) + leaf.shape),
                                   {**_example(), "reward": t.astype(jnp.float32)})
        state = ReplayBuffer.add_batch(state, transitions)
        return (state, key), ReplayBuffer.sample(state, sub, 3)["reward"]

    state = ReplayBuffer.init(_example(), 5)
    (state, _), rewards = jax.jit(lambda s: jax.lax.scan(step, (s, jax.random.key(1, impl="rbg")),
                                                         jnp.arange(6)))(state)
    assert isinstance(state, BufferState) and int(state.size) == 5 and int(state.insert_pos) == 2
    np.testing.assert_array_equal(np.asarray(state.data["reward"]), [5, 5, 3, 4, 4])
    rewards = np.asarray(rewards)
    assert all(set(rewards[t]) <= set(range(t + 1)) for t in range(6))  # only what was inserted


def test_add_batch_rejects_mismatched_transitions():
    state = ReplayBuffer.init(_example(), CAPACITY)
    bad = _batch(0, 2)
    bad["reward"] = bad["reward"].astype(jnp.float16)
    with pytest.raises(ValueError, match="does not match"):
        ReplayBuffer.add_batch(state, bad)
    with pytest.raises(ValueError, match="structure"):
        ReplayBuffer.add_batch(state, {"pos": _batch(0, 2)["pos"]})


def _landmark_transition(n_agents=1, history=8):
    """One multi-scale landmark transition as jaxmed stores it: environment state, not crops."""
    i16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int16)  # noqa: E731
    i8 = jax.ShapeDtypeStruct((n_agents,), jnp.int8)
    flag = jax.ShapeDtypeStruct((n_agents,), jnp.bool_)
    return {
        "volume": jax.ShapeDtypeStruct((), jnp.int32),
        "pos": i16(n_agents, 3), "history": i16(n_agents, history, 3), "level": i8,
        "action": i8, "reward": jax.ShapeDtypeStruct((n_agents,), jnp.float32),
        "next_pos": i16(n_agents, 3), "next_level": i8,  # next ring = history pushed with next_pos
        "terminated": flag, "truncated": flag,
    }


def test_landmark_transition_bytes():
    example = _landmark_transition()
    per = bytes_per_transition(example)
    assert per == 4 + 6 + 48 + 1 + 1 + 4 + 6 + 1 + 1 + 1 == 73
    assert ReplayBuffer.bytes_per_transition(example) == per
    assert per * 1_000_000 < 100e6  # a million transitions in < 100 MB
    # the reference keeps 91 KB per transition per agent (stacked float crops): > 1000x more
    assert 91_000 / per > 1000
    state = jax.eval_shape(lambda: ReplayBuffer.init(example, 1_000_000))
    stored = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state.data))
    assert stored == per * 1_000_000
    assert bytes_per_transition({"a": 1.0, "b": np.zeros((2, 2), np.int64)}) == 4 + 32
