"""keras_tipsv2.kernels: each kernel computes what the layers compute, and
the policy decides once per platform and can be switched off."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2 import kernels
from keras_tipsv2.kernels import policy
from keras_tipsv2.kernels import cpu_attention
from keras_tipsv2.kernels.cpu_attention import attention_by_head_groups
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
    kernels.set_enabled(False, ["cpu_attention"])
    assert not kernels.active("cpu_attention")
    assert "cpu_attention" not in policy.state()


def test_the_environment_switches_kernels_off(monkeypatch, all_kernels_on):
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "off")
    assert policy.state() == ()
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "-cpu_attention")
    assert not kernels.active("cpu_attention")
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match=policy.ENVIRONMENT_VARIABLE):
        kernels.active("cpu_attention")
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "on")


def test_unknown_kernel_names_are_refused():
    with pytest.raises(ValueError, match="Unknown kernel 'fast'"):
        kernels.set_enabled(False, ["fast"])


def test_describe_names_every_kernel_and_its_state(all_kernels_on):
    kernels.set_enabled(False, ["cpu_attention"])
    text = kernels.describe()
    for name in policy.KERNELS:
        assert name in text
    line = next(x for x in text.splitlines() if "cpu_attention" in x)
    on_platform = BACKEND in policy.KERNELS["cpu_attention"][0] and CPU_ONLY
    expected = "switched off" if on_platform else "platform"
    assert expected in line


def test_attention_kernel_only_for_float32(all_kernels_on):
    on = kernels.active("cpu_attention")
    assert (policy.attention_fn("float32") is not None) == on
    assert policy.attention_fn("bfloat16") is None


@pytest.mark.skipif(BACKEND == "torch", reason="torch never takes cpu_attention")
def test_jax_loops_at_every_length_tensorflow_only_over_long_sequences(all_kernels_on):
    if not kernels.active("cpu_attention"):
        pytest.skip("cpu_attention is off on this platform")
    expected = {
        "jax": attention_by_head_groups,
        "tensorflow": cpu_attention.attention_for_long_sequences,
    }[BACKEND]
    assert policy.attention_fn("float32") is expected


# --- The kernels ---------------------------------------------------------


@pytest.fixture(params=["one head per step", "all heads per step"])
def step_bytes(request, monkeypatch):
    """Runs a test with loop steps of one (image, head) pair, then of all
    of an image's heads (the test tensors have 3 heads of 7 tokens)."""
    per_head = 7 * 7 * 4
    budget = per_head if request.param == "one head per step" else 3 * per_head
    monkeypatch.setattr(cpu_attention, "STEP_BYTES", budget)
    return budget


def test_heads_per_step_is_the_largest_divisor_that_fits(monkeypatch):
    monkeypatch.setattr(cpu_attention, "STEP_BYTES", 12 * 2**20)
    assert cpu_attention.heads_per_step(1025, 12) == 2  # 4.2 MB per head
    assert cpu_attention.heads_per_step(257, 12) == 12
    assert cpu_attention.heads_per_step(600, 12) == 6  # 1.44 MB: 8 would fit, 8 does not divide
    assert cpu_attention.heads_per_step(4000, 12) == 1  # over budget: still one
    assert cpu_attention.heads_per_step(1025, 7) == 1


def test_only_long_sequences_split_an_images_heads(monkeypatch):
    monkeypatch.setattr(cpu_attention, "STEP_BYTES", 12 * 2**20)
    assert cpu_attention.splits_heads(1025, 12)  # 448 px: 2 heads per step
    assert cpu_attention.splits_heads(577, 12)  # 336 px: 6 heads per step
    assert not cpu_attention.splits_heads(257, 12)  # 224 px: one image per step


def test_long_sequence_attention_takes_the_loop_only_when_heads_split(step_bytes, monkeypatch):
    calls = []
    loop = cpu_attention.attention_by_head_groups
    monkeypatch.setattr(
        cpu_attention, "attention_by_head_groups", lambda *a: calls.append(1) or loop(*a)
    )
    q, k, v = _qkv()
    expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
    got = cpu_attention.attention_for_long_sequences(q, k, v, 8**-0.5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(expected), atol=1e-5, rtol=1e-5
    )
    assert bool(calls) == (step_bytes < 3 * 7 * 7 * 4)


def test_head_groups_equal_the_backend_kernel(step_bytes):
    q, k, v = _qkv()
    expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
    got = attention_by_head_groups(q, k, v, 8**-0.5)
    assert tuple(got.shape) == tuple(expected.shape)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(expected), atol=1e-5, rtol=1e-5
    )


def test_head_groups_gradients_equal_the_backend_kernels(step_bytes):
    q, k, v = _qkv(seed=1)
    weights = ops.convert_to_tensor(
        np.random.default_rng(2).standard_normal((2, 7, 3, 8)).astype("float32")
    )

    def loss(fn):
        return lambda a, b, c: ops.sum(fn(a, b, c) * weights)

    fused = loss(lambda a, b, c: ops.dot_product_attention(a, b, c, scale=8**-0.5))
    groups = loss(lambda a, b, c: attention_by_head_groups(a, b, c, 8**-0.5))
    for got, expected in zip(_grads(groups, q, k, v), _grads(fused, q, k, v)):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), ops.convert_to_numpy(expected), atol=1e-4, rtol=1e-4
        )


def test_towers_give_the_same_numbers_with_and_without_kernels(all_kernels_on, monkeypatch):
    # One head per loop step, so the compiled towers run the kernel's loop.
    monkeypatch.setattr(cpu_attention, "STEP_BYTES", 1)
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
