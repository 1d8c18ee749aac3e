"""Q-network trunks, heads, multi-agent sharing/communication and the config factory.

Shapes and parameter counts use ``jax.eval_shape`` (no compilation); real forwards use tiny crops
(patch trunk at 15³, convs at 16³ / 34³ with reduced width).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.errors import ConfigError
from jaxmed.networks import (
    MultiAgentQNetwork,
    PatchTrunk,
    QNetwork,
    network_from_config,
)
from jaxmed.networks.trunks import network3d_output_size

K = 2  # history frames in the small tests
# The "rbg" PRNG: XLA CPU compiles threefry-based initialisers of conv nets 5-10x slower.
KEY = jax.random.key(0, impl="rbg")


def _frames(shape, seed=1):
    """Float32 frames in [0, 1) (NumPy RNG: nothing to compile)."""
    return jnp.asarray(np.random.default_rng(seed).random(shape, np.float32))


def _shapes(net, x):
    """(parameter shapes, output ShapeDtypeStruct) without compiling."""
    params = jax.eval_shape(net.init, KEY, x)
    out = jax.eval_shape(net.apply, params, x)
    return params, out


def _count(params):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def test_network3d_matches_published_parameter_count():
    # Alansary et al. 2019 Network3D (rl-medical, PyTorch): 4 frames of 45^3, FC 256-128-6.
    net = QNetwork(trunk="network3d", head="q", n_actions=6)
    params, out = _shapes(net, jax.ShapeDtypeStruct((1, 4, 45, 45, 45), jnp.uint8))
    assert _count(params) == 550_860
    assert out.shape == (1, 6) and out.dtype == jnp.float32
    trunk = params["params"]["trunk"]
    assert trunk["Conv_0"]["kernel"].shape == (5, 5, 5, 4, 32)
    assert trunk["Conv_3"]["kernel"].shape == (3, 3, 3, 64, 64)
    assert params["params"]["head"]["hidden"]["Dense_0"]["kernel"].shape == (512, 256)  # 2^3 x 64
    assert network3d_output_size(45) == 2 and network3d_output_size(34) == 1
    assert network3d_output_size(33) == 0


@pytest.mark.parametrize(
    "trunk, options, d, features",
    [
        ("patch", {}, 15, 128),
        ("patch", {"group": 1, "width": 0.5}, 10, 8 * 64),
        ("strided", {}, 16, 64),
        ("strided", {"width": 2.0}, 20, 8 * 128),
        ("network3d", {"width": 0.5}, 34, 32),
    ],
)
def test_trunk_and_head_output_shapes(trunk, options, d, features):
    for head in ("q", "dueling"):
        net = QNetwork(trunk=trunk, head=head, n_actions=5, trunk_kwargs=options)
        params, out = _shapes(net, jax.ShapeDtypeStruct((2, 3, K, d, d, d), jnp.uint8))
        assert out.shape == (2, 3, 5) and out.dtype == jnp.float32
        head_params = params["params"]["head"]
        if head == "dueling":
            head_params = head_params["value_stream"]
        assert head_params["hidden"]["Dense_0"]["kernel"].shape == (features, 256)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("trunk, d", [("strided", 16), ("network3d", 34)])
def test_conv_trunks_run(trunk, d):
    net = QNetwork(trunk=trunk, trunk_kwargs={"width": 0.25})
    x = _frames((1, K, d, d, d))
    params = jax.jit(net.init)(KEY, x)
    q = jax.jit(net.apply)(params, x)
    assert q.shape == (1, 6) and bool(jnp.all(jnp.isfinite(q)))


@pytest.fixture(scope="module")
def dueling_patch():
    """A dueling patch network at 15^3 with its parameters and a float batch in [0, 1]."""
    net = QNetwork(trunk="patch", head="dueling")
    x = jnp.round(_frames((3, K, 15, 15, 15)) * 255) / 255  # exactly representable as uint8 / 255
    return net, jax.jit(net.init)(KEY, x), x


def test_uint8_input_equals_float_over_255(dueling_patch):
    net, params, x = dueling_patch
    as_uint8 = jnp.round(x * 255).astype(jnp.uint8)
    apply = jax.jit(net.apply)
    np.testing.assert_allclose(apply(params, as_uint8), apply(params, x), rtol=1e-5, atol=1e-6)


def test_dueling_identity(dueling_patch):
    net, params, x = dueling_patch
    q, state = jax.jit(partial(net.apply, mutable=["intermediates"]))(params, x)
    streams = state["intermediates"]["head"]
    (value,), (advantage,) = streams["value"], streams["advantage"]
    assert value.shape == (3, 1) and advantage.shape == (3, 6)
    np.testing.assert_allclose(q - q.mean(-1, keepdims=True),
                               advantage - advantage.mean(-1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(q.mean(-1, keepdims=True), value, atol=1e-5)


def test_bfloat16_compute_float32_params_and_output(dueling_patch):
    net, params, x = dueling_patch
    bf16 = net.clone(dtype=jnp.bfloat16)
    assert jax.tree.structure(jax.eval_shape(bf16.init, KEY, x)) == jax.tree.structure(params)  # same params
    q16, q32 = jax.jit(bf16.apply)(params, x), jax.jit(net.apply)(params, x)
    assert q16.dtype == jnp.float32
    scale = float(jnp.abs(q32).max())
    np.testing.assert_allclose(q16, q32, atol=0.05 * scale)
    assert not np.array_equal(q16, q32)  # bfloat16 really was used


def _param_shapes(net, x):
    shapes = jax.tree.map(lambda leaf: leaf.shape, jax.eval_shape(net.init, KEY, x)["params"])
    return jax.tree.leaves_with_path(shapes, is_leaf=lambda s: isinstance(s, tuple))


def test_multi_agent_parameter_sharing():
    x = jax.ShapeDtypeStruct((4, 3, K, 15, 15, 15), jnp.uint8)
    shared = _param_shapes(MultiAgentQNetwork(n_agents=3, trunk="patch"), x)
    single = _param_shapes(QNetwork(trunk="patch"), x)
    stacked = [(path, (3,) + s) for path, s in single]
    is_trunk = [path[0].key == "trunk" for path, _ in single]
    # shared: one trunk, three heads (leading agent axis)
    assert shared == [one if t else three for one, three, t in zip(single, stacked, is_trunk)]
    separate = _param_shapes(MultiAgentQNetwork(n_agents=3, trunk="patch", share_trunk=False), x)
    assert separate == stacked  # independent trunks too
    comm = dict((jax.tree_util.keystr(p), s) for p, s in
                _param_shapes(MultiAgentQNetwork(n_agents=3, trunk="patch", communication=True), x))
    # CommNet: the layers after the first hidden layer see [own, mean of others] (twice as wide)
    assert comm["['head']['hidden']['Dense_1']['kernel']"] == (3, 2 * 256, 128)
    assert comm["['head']['out']['kernel']"] == (3, 2 * 128, 6)


@pytest.mark.parametrize("communication", [False, True])
def test_multi_agent_heads_and_communication(communication):
    n = 3
    net = MultiAgentQNetwork(n_agents=n, trunk="patch", communication=communication)
    same = jnp.broadcast_to(_frames((K, 15, 15, 15)), (n, K, 15, 15, 15))
    changed = same.at[1].set(_frames((K, 15, 15, 15), seed=7))  # only agent 1's input differs
    x = jnp.stack([same, changed])  # (2, n_agents, k, D, D, D)
    params = jax.jit(net.init)(KEY, x)
    q = jax.jit(net.apply)(params, x)
    assert q.shape == (2, n, 6) and q.dtype == jnp.float32
    # per-agent heads: identical inputs, different Q-values
    assert not np.allclose(q[0, 0], q[0, 2], atol=1e-4)
    # agent 0 hears agent 1 only through communication
    moved = np.abs(np.asarray(q[1, 0] - q[0, 0])).max()
    assert (moved > 1e-4) if communication else (moved == 0.0)
    assert np.abs(np.asarray(q[1, 1] - q[0, 1])).max() > 1e-4


def test_network_from_config():
    net = network_from_config({"trunk": {"name": "patch", "patch_size": 5, "width": 0.5},
                               "head": "dueling", "dtype": "bfloat16", "n_agents": 2,
                               "communication": True, "crop_size": 15})
    assert isinstance(net, MultiAgentQNetwork)
    assert net.dtype == jnp.bfloat16 and net.communication and net.share_trunk
    assert net.trunk_kwargs == {"patch_size": 5, "width": 0.5}
    single = network_from_config({"trunk": "network3d", "crop_size": 45})
    assert type(single) is QNetwork and single.head == "q" and single.n_actions == 6


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"trunk": "resnet"}, "unknown trunk 'resnet'"),
        ({"head": "noisy"}, "unknown head 'noisy'"),
        ({"trunk": {"name": "patch", "patchsize": 5}}, "unknown option(s) ['patchsize']"),
        ({"head": {"name": "q", "n_actions": 4}}, "unknown option(s) ['n_actions']"),
        ({"trunks": "patch"}, "unknown key(s) trunks"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"communication": True}, "need n_agents"),
        ({"n_agents": 0}, "n_agents must be a positive int"),
        ({"trunk": "patch", "crop_size": 16}, "not divisible by patch_size * group = 5 * 3 = 15"),
        ({"trunk": {"name": "patch", "activation": "tanh"}, "crop_size": 15}, "unknown activation"),
        ({"trunk": "network3d", "crop_size": 20}, "too small"),
        ({"trunk": {"name": "strided", "width": 0}, "crop_size": 16}, "width must be > 0"),
    ],
)
def test_bad_config_errors(cfg, message):
    with pytest.raises(ConfigError) as err:
        network_from_config(cfg)
    assert message in str(err.value)


def test_shape_errors_at_trace_time():
    with pytest.raises(ConfigError, match="not divisible"):
        jax.eval_shape(PatchTrunk().init, KEY, jax.ShapeDtypeStruct((1, K, 16, 15, 15), jnp.float32))
    with pytest.raises(ConfigError, match=r"needs input \(\.\.\., 3, k"):
        jax.eval_shape(MultiAgentQNetwork(n_agents=3).init, KEY,
                       jax.ShapeDtypeStruct((2, K, 15, 15, 15), jnp.float32))
    with pytest.raises(ConfigError, match="unknown trunk"):
        jax.eval_shape(QNetwork(trunk="unet").init, KEY,
                       jax.ShapeDtypeStruct((1, K, 15, 15, 15), jnp.float32))
