"""keras_tipsv2.kernels: each kernel computes what the layers compute, and
the policy decides once per platform and can be switched off."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2 import kernels
from keras_tipsv2.kernels import policy
from keras_tipsv2.kernels.jax_cpu_attention import explicit_attention
from tests.conftest import tiny_backbone_kwargs

BACKEND = keras.config.backend()
CPU_ONLY = policy._cpu_only()


@pytest.fixture
def all_kernels_on(monkeypatch):
    monkeypatch.delenv(policy.ENVIRONMENT_VARIABLE, raising=False)
    policy.set_enabled(True)
    yield
    policy.set_enabled(True)


def _qkv(seed=0, tokens=7):
    rng = np.random.default_rng(seed)
    # Large logits on purpose: the shift by the row max must keep exp finite.
    return [
        ops.convert_to_tensor(rng.standard_normal((2, tokens, 3, 8)).astype("float32") * 6)
        for _ in range(3)
    ]


def _grads(fn, *args):
    """Gradients of the scalar fn(*args) w.r.t. every argument."""
    if BACKEND == "jax":
        import jax

        return jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(args)
            out = fn(*args)
        return tape.gradient(out, args)
    import torch

    args = [a.detach().requires_grad_(True) for a in args]
    return torch.autograd.grad(fn(*args), args)


# --- The policy ----------------------------------------------------------


def test_each_kernel_runs_only_on_its_backend_on_cpu(all_kernels_on):
    for name, (backends, _) in policy.KERNELS.items():
        assert kernels.active(name) == (BACKEND in backends and CPU_ONLY), name


def test_switching_off_turns_every_kernel_off_and_on_again(all_kernels_on):
    before = policy.state()
    kernels.set_enabled(False)
    assert policy.state() == ()
    assert policy.attention_fn("float32") is None
    kernels.set_enabled(True)
    assert policy.state() == before


def test_one_kernel_can_be_switched_off_alone(all_kernels_on):
    kernels.set_enabled(False, ["jax_cpu_attention"])
    assert not kernels.active("jax_cpu_attention")
    assert "jax_cpu_attention" not in policy.state()


def test_the_environment_switches_kernels_off(monkeypatch, all_kernels_on):
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "off")
    assert policy.state() == ()
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "-jax_cpu_attention")
    assert not kernels.active("jax_cpu_attention")
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match=policy.ENVIRONMENT_VARIABLE):
        kernels.active("jax_cpu_attention")
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "on")


def test_unknown_kernel_names_are_refused():
    with pytest.raises(ValueError, match="Unknown kernel 'fast'"):
        kernels.set_enabled(False, ["fast"])


def test_describe_names_every_kernel_and_its_state(all_kernels_on):
    kernels.set_enabled(False, ["jax_cpu_attention"])
    text = kernels.describe()
    for name in policy.KERNELS:
        assert name in text
    line = next(x for x in text.splitlines() if "jax_cpu_attention" in x)
    expected = "switched off" if BACKEND == "jax" and CPU_ONLY else "platform"
    assert expected in line


def test_attention_kernel_only_for_float32(all_kernels_on):
    on = kernels.active("jax_cpu_attention")
    assert (policy.attention_fn("float32") is explicit_attention) == on
    assert policy.attention_fn("bfloat16") is None


# --- The kernels ---------------------------------------------------------


def test_explicit_attention_equals_the_backend_kernel():
    q, k, v = _qkv()
    expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
    got = explicit_attention(q, k, v, 8**-0.5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(expected), atol=1e-5, rtol=1e-5
    )


def test_explicit_attention_gradients_equal_the_backend_kernels():
    q, k, v = _qkv(seed=1)
    weights = ops.convert_to_tensor(
        np.random.default_rng(2).standard_normal((2, 7, 3, 8)).astype("float32")
    )

    def loss(fn):
        return lambda a, b, c: ops.sum(fn(a, b, c) * weights)

    fused = loss(lambda a, b, c: ops.dot_product_attention(a, b, c, scale=8**-0.5))
    explicit = loss(lambda a, b, c: explicit_attention(a, b, c, 8**-0.5))
    for got, expected in zip(_grads(explicit, q, k, v), _grads(fused, q, k, v)):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), ops.convert_to_numpy(expected), atol=1e-4, rtol=1e-4
        )


def test_towers_give_the_same_numbers_with_and_without_kernels(all_kernels_on):
    rng = np.random.default_rng(3)
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = rng.random((5, 28, 42, 3)).astype("float32")
    ids = rng.integers(1, 64, (3, 6)).astype("int32")
    mask = np.ones_like(ids)

    def outputs():
        with_grad_off = _no_grad()
        with with_grad_off:
            image = backbone.encode_images(images)
            layers = backbone.get_intermediate_layers(images, [0, 1])
            text = backbone.encode_text(ids, mask)
        return [image["patch_tokens"], image["cls_tokens"], layers[0]["patch_tokens"], text]

    with_kernels = outputs()
    kernels.set_enabled(False)
    without = outputs()
    for got, expected in zip(with_kernels, without):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), ops.convert_to_numpy(expected), atol=1e-5, rtol=1e-5
        )


def _no_grad():
    if BACKEND == "torch":
        import torch

        return torch.no_grad()
    import contextlib

    return contextlib.nullcontext()
