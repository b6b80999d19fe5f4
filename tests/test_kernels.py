"""keras_tipsv2.kernels: each kernel computes what the layers compute, the
policy decides once and can be switched off, and private or experimental
APIs fall back to the plain path when they are missing or refused."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2 import kernels
from keras_tipsv2.kernels import jax_cpu
from keras_tipsv2.kernels import policy
from keras_tipsv2.kernels.xla_cpu_attention import explicit_attention
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
    assert policy.jax_compiler_options() is None
    assert policy.images_per_call(256) is None
    kernels.set_enabled(True)
    assert policy.state() == before


def test_one_kernel_can_be_switched_off_alone(all_kernels_on):
    kernels.set_enabled(False, ["xla_cpu_attention"])
    assert not kernels.active("xla_cpu_attention")
    assert "xla_cpu_attention" not in policy.state()


def test_the_environment_switches_kernels_off(monkeypatch, all_kernels_on):
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "off")
    assert policy.state() == ()
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "-jax_cpu_batch_parts")
    assert not kernels.active("jax_cpu_batch_parts")
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "sometimes")
    with pytest.raises(ValueError, match=policy.ENVIRONMENT_VARIABLE):
        kernels.active("jax_cpu_batch_parts")
    monkeypatch.setenv(policy.ENVIRONMENT_VARIABLE, "on")


def test_unknown_kernel_names_are_refused():
    with pytest.raises(ValueError, match="Unknown kernel 'fast'"):
        kernels.set_enabled(False, ["fast"])


def test_describe_names_every_kernel_and_its_state(all_kernels_on):
    kernels.set_enabled(False, ["jax_cpu_batch_parts"])
    text = kernels.describe()
    for name in policy.KERNELS:
        assert name in text
    line = next(x for x in text.splitlines() if "jax_cpu_batch_parts" in x)
    expected = "switched off" if BACKEND == "jax" and CPU_ONLY else "platform"
    assert expected in line


def test_attention_kernel_only_for_float32(all_kernels_on):
    on = kernels.active("xla_cpu_attention")
    assert (policy.attention_fn("float32") is explicit_attention) == on
    assert policy.attention_fn("bfloat16") is None


def test_image_batches_are_cut_into_calls_of_600_tokens(all_kernels_on):
    if not kernels.active("jax_cpu_batch_parts"):
        assert policy.images_per_call(256) is None
        return
    # B/14 at 224 px (256 patches), 448 px (1,024) and 518 px (1,369).
    assert [policy.images_per_call(p) for p in (256, 1024, 1369)] == [2, 1, 1]


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


@pytest.mark.skipif(BACKEND != "jax", reason="XLA:CPU compiler options")
def test_an_xla_that_refuses_the_option_gets_the_default_compilation(monkeypatch):
    monkeypatch.setattr(jax_cpu, "DOT_EMITTER_OPTIONS", {"xla_cpu_option_no_xla_has": ""})
    jax_cpu.dot_emitter_options.cache_clear()
    try:
        assert jax_cpu.dot_emitter_options() is None
    finally:
        jax_cpu.dot_emitter_options.cache_clear()


@pytest.mark.skipif(BACKEND != "jax", reason="XLA:CPU compiler options")
def test_the_option_takes_dots_away_from_ynnpack():
    import jax
    import jax.numpy as jnp

    options = jax_cpu.dot_emitter_options()
    if options is None:
        pytest.skip("this jaxlib refuses the option (the fallback test covers it)")
    a = jnp.ones((64, 64))
    default = jax.jit(jnp.matmul).lower(a, a).compile().as_text().lower()
    if "ynn_fusion" not in default:
        pytest.skip("this jaxlib does not send dots to YNNPACK by default")
    chosen = jax.jit(jnp.matmul, compiler_options=options).lower(a, a).compile().as_text()
    assert "ynn_fusion" not in chosen.lower()


@pytest.mark.skipif(BACKEND != "torch", reason="torch's oneDNN op")
class TestOneDNNMatmuls:
    def test_equals_torch_matmul_within_rounding(self):
        import torch

        from keras_tipsv2.kernels import torch_onednn

        x = torch.randn(2, 5, 16)
        kernel = torch.randn(16, 24)
        with torch.no_grad():
            expected = torch.matmul(x, kernel)
            with torch_onednn.onednn_matmuls():
                got = torch.matmul(x, kernel)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    def test_runs_the_dense_layers_matmuls_only_without_autograd(self, monkeypatch):
        import torch

        from keras_tipsv2.kernels import torch_onednn

        calls = []
        real = torch_onednn._onednn_matmul
        monkeypatch.setattr(
            torch_onednn, "_onednn_matmul", lambda x, k: calls.append(x.shape) or real(x, k)
        )
        layer = keras.layers.Dense(4)
        x = np.ones((3, 8), "float32")
        with torch_onednn.onednn_matmuls():
            out = layer(x)
            assert calls == [] and out.requires_grad
            with torch.no_grad():
                layer(x)
        assert calls == [(3, 8)]

    def test_a_torch_without_the_op_keeps_torch_matmul(self, monkeypatch):
        import torch

        from keras_tipsv2.kernels import torch_onednn

        def missing(*args):
            raise AttributeError("no mkldnn._linear_pointwise in this torch")

        monkeypatch.setattr(torch_onednn, "_onednn_matmul", missing)
        torch_onednn.onednn_available.cache_clear()
        try:
            assert not torch_onednn.onednn_available()
            x = torch.randn(3, 8)
            kernel = torch.randn(8, 4)
            with torch.no_grad(), torch_onednn.onednn_matmuls():
                got = torch.matmul(x, kernel)
            torch.testing.assert_close(got, x @ kernel)
        finally:
            torch_onednn.onednn_available.cache_clear()
