"""TIPSv2Attention's backend-specific paths: the explicit softmax (XLA on CPUs)
and the copy-free torch kernel call, each against `ops.dot_product_attention`."""

from unittest import mock

import keras
import numpy as np
import pytest
from keras import ops
from keras_hub.src.tests.test_case import TestCase

from keras_tipsv2.layers import attention


def _qkv(seed=0, tokens=7):
    rng = np.random.default_rng(seed)
    # Large logits on purpose: the shift by the row max must keep exp finite.
    return [
        ops.convert_to_tensor(rng.standard_normal((2, tokens, 3, 8)).astype("float32") * 6)
        for _ in range(3)
    ]


class ExplicitAttentionTest(TestCase):
    def test_matches_the_backend_kernel(self):
        q, k, v = _qkv()
        expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
        got = attention._explicit_attention(q, k, v, 8**-0.5)
        self.assertAllClose(got, expected, atol=1e-5, rtol=1e-5)

    def test_gradients_match_the_backend_kernel(self):
        q, k, v = _qkv(seed=1)
        weights = ops.convert_to_tensor(
            np.random.default_rng(2).standard_normal((2, 7, 3, 8)).astype("float32")
        )

        def loss(fn):
            return lambda q_, k_, v_: ops.sum(fn(q_, k_, v_) * weights)

        fused = loss(lambda a, b, c: ops.dot_product_attention(a, b, c, scale=8**-0.5))
        explicit = loss(lambda a, b, c: attention._explicit_attention(a, b, c, 8**-0.5))
        for got, expected in zip(_grads(explicit, q, k, v), _grads(fused, q, k, v)):
            self.assertAllClose(got, expected, atol=1e-4, rtol=1e-4)

    def test_only_xla_on_cpu_takes_the_explicit_path(self):
        expected = keras.config.backend() in ("jax", "tensorflow") and all(
            d.lower().startswith("cpu") for d in keras.distribution.list_devices()
        )
        self.assertEqual(attention.explicit_attention_is_faster(), expected)
        # Every JAX call is compiled by XLA; TensorFlow's only under
        # jit_compile (TensorFlowPerHeadAttentionTest), torch's never.
        self.assertEqual(attention._compiled_by_xla(), keras.config.backend() == "jax")

    def test_layer_output_does_not_depend_on_the_path(self):
        layer = attention.TIPSv2Attention(24, 3)
        x = ops.convert_to_tensor(
            np.random.default_rng(3).standard_normal((2, 9, 24)).astype("float32")
        )
        outputs = []
        for explicit in (True, False):
            with mock.patch.object(
                attention, "explicit_attention_is_faster", return_value=explicit
            ):
                outputs.append(ops.convert_to_numpy(layer(x)))
        self.assertAllClose(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch's kernel call")
class TorchAttentionTest(TestCase):
    def test_equals_keras_dot_product_attention(self):
        q, k, v = _qkv(seed=4)
        expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
        got = attention._torch_attention(q, k, v, 8**-0.5)
        self.assertEqual(tuple(got.shape), (2, 7, 3, 8))
        self.assertAllClose(got, expected, atol=1e-6, rtol=1e-6)

    def test_reads_strided_views_of_the_projection(self):
        # The point of the path: q, k, v sliced from one (B, N, 3D) tensor
        # are fed to the kernel as views, with no contiguous copies.
        import torch

        qkv = torch.randn(2, 7, 3 * 24)
        q, k, v = (t.reshape(2, 7, 3, 8) for t in torch.split(qkv, 24, dim=-1))
        copies = []
        real_kernel = torch.nn.functional.scaled_dot_product_attention

        def spy(q_, k_, v_, **kwargs):
            copies.extend(t.is_contiguous() for t in (q_, k_, v_))
            return real_kernel(q_, k_, v_, **kwargs)

        with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", spy):
            got = attention._torch_attention(q, k, v, 8**-0.5)
        self.assertEqual(copies, [False, False, False])
        expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
        self.assertAllClose(got, expected, atol=1e-6, rtol=1e-6)

    def test_gradients_match_keras_dot_product_attention(self):
        q, k, v = _qkv(seed=5)

        def loss(fn):
            return lambda q_, k_, v_: ops.sum(fn(q_, k_, v_) ** 2)

        fused = loss(lambda a, b, c: ops.dot_product_attention(a, b, c, scale=8**-0.5))
        ours = loss(lambda a, b, c: attention._torch_attention(a, b, c, 8**-0.5))
        for got, expected in zip(_grads(ours, q, k, v), _grads(fused, q, k, v)):
            self.assertAllClose(got, expected, atol=1e-4, rtol=1e-4)

    def test_bfloat16_matches_keras_dot_product_attention(self):
        q, k, v = (ops.cast(t, "bfloat16") for t in _qkv(seed=6))
        expected = ops.dot_product_attention(q, k, v, scale=8**-0.5)
        got = attention._torch_attention(q, k, v, 8**-0.5)
        self.assertEqual(keras.backend.standardize_dtype(got.dtype), "bfloat16")
        self.assertAllClose(ops.cast(got, "float32"), ops.cast(expected, "float32"), atol=2e-2, rtol=2e-2)

    def test_a_key_mask_matches_softmax_over_the_real_keys(self):
        q, k, v = _qkv(seed=8)
        mask = np.array([[1, 1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0]], "int32")
        got = ops.convert_to_numpy(attention._torch_attention(q, k, v, 8**-0.5, mask))
        qn, kn, vn = (ops.convert_to_numpy(t).astype("float64") for t in (q, k, v))
        logits = np.einsum("bqhd,bkhd->bhqk", qn * 8**-0.5, kn)
        logits = np.where(mask[:, None, None, :] > 0, logits, -np.inf)
        # The second example has no real key: it attends uniformly (finite)
        # instead of the NaN a boolean mask would give.
        logits[1] = 0.0
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        expected = np.einsum("bhqk,bkhd->bqhd", weights, vn)
        self.assertTrue(np.isfinite(got).all())
        # float64 reference; logits reach ~100 here, so float32 rounds at 1e-5.
        self.assertAllClose(got, expected, atol=1e-4, rtol=1e-4)

    def test_the_layer_calls_it_with_and_without_a_key_mask(self):
        layer = attention.TIPSv2Attention(24, 3)
        x = ops.convert_to_tensor(
            np.random.default_rng(7).standard_normal((2, 9, 24)).astype("float32")
        )
        with mock.patch.object(
            attention, "_torch_attention", wraps=attention._torch_attention
        ) as spy:
            layer(x)
            layer(x, key_mask=np.ones((2, 9), "int32"))
            self.assertEqual(spy.call_count, 2)


def _grads(fn, *args):
    """Gradients of a scalar fn with respect to each argument, as numpy."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args)]
    if backend == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            value = fn(*variables)
        return [g.numpy() for g in tape.gradient(value, variables)]
    import torch

    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    fn(*leaves).backward()
    return [leaf.grad.cpu().numpy() for leaf in leaves]


def _packed_qkv(seed, batch=2, tokens=11, heads=3, head_dim=8, scale=6.0):
    """A (B, N, 3D) qkv as the fused projection packs it: q | k | v, each
    heads-major. Large by default, as `_qkv`."""
    rng = np.random.default_rng(seed)
    shape = (batch, tokens, 3 * heads * head_dim)
    return ops.convert_to_tensor(rng.standard_normal(shape).astype("float32") * scale)


def _keras_attention(qkv, heads=3):
    """`ops.dot_product_attention` of a packed qkv, as (B, N, D)."""
    batch, tokens, channels = ops.shape(qkv)
    head_dim = channels // (3 * heads)
    q, k, v = (
        ops.reshape(t, (batch, tokens, heads, head_dim)) for t in ops.split(qkv, 3, -1)
    )
    out = ops.dot_product_attention(q, k, v, scale=head_dim**-0.5)
    return ops.reshape(out, (batch, tokens, heads * head_dim))


def _d_out(seed, like_qkv):
    batch, tokens, channels = ops.shape(like_qkv)
    shape = (batch, tokens, channels // 3)
    return ops.convert_to_tensor(
        np.random.default_rng(seed).standard_normal(shape).astype("float32")
    )


class PerHeadAttentionTest(TestCase):
    """A few (batch, head) pairs per loop step from the packed qkv:
    TensorFlow's CPU path, with its written-out backward; the plain
    functions are checked on every backend."""

    def test_matches_the_backend_kernel(self):
        qkv = _packed_qkv(seed=8)
        got = attention._attention_per_head(qkv, 3, 8**-0.5)
        # Logits of ~100, scaled on the query here and on the logits in
        # JAX's kernel: float32 rounding reaches 1e-5.
        self.assertAllClose(got, _keras_attention(qkv), atol=1e-4, rtol=1e-4)

    def test_a_heads_range_gives_those_heads_channels(self):
        qkv = _packed_qkv(seed=17, heads=4)
        expected = _keras_attention(qkv, heads=4)
        got = attention._attention_per_head(qkv, 4, 8**-0.5, heads=(1, 2))
        self.assertAllClose(got, expected[..., 8:24], atol=1e-5, rtol=1e-5)

    def test_written_out_gradients_equal_autodiff_of_the_backend_kernel(self):
        qkv = _packed_qkv(seed=9)
        d_out = _d_out(10, qkv)
        (expected,) = _grads(lambda x: ops.sum(_keras_attention(x) * d_out), qkv)
        got = attention._attention_per_head_grads(qkv, d_out, 3, 8**-0.5)
        self.assertEqual(tuple(got.shape), (2, 11, 3, 24))
        self.assertAllClose(ops.reshape(got, (2, 11, 72)), expected, atol=1e-4, rtol=1e-4)
        # A heads range: the same gradients, that range's channels only.
        part = attention._attention_per_head_grads(qkv, d_out, 3, 8**-0.5, heads=(2, 1))
        full = np.reshape(expected, (2, 11, 3, 24))
        self.assertAllClose(part, full[..., 16:24], atol=1e-4, rtol=1e-4)

    def test_one_pair_per_step_gives_the_same_values_and_gradients(self):
        qkv = _packed_qkv(seed=14)
        d_out = _d_out(15, qkv)
        grouped = attention._attention_per_head(qkv, 3, 8**-0.5)
        grouped_grads = attention._attention_per_head_grads(qkv, d_out, 3, 8**-0.5)
        with mock.patch.object(attention, "_STEP_LOGITS", 1):
            self.assertEqual(attention._group_size(3, 11), 1)
            single = attention._attention_per_head(qkv, 3, 8**-0.5)
            single_grads = attention._attention_per_head_grads(qkv, d_out, 3, 8**-0.5)
        # Outputs of ~15 from logits of ~100: float32 rounding reaches 1e-5.
        self.assertAllClose(grouped, single, atol=1e-4, rtol=1e-4)
        self.assertAllClose(grouped_grads, single_grads, atol=1e-4, rtol=1e-4)

    def test_keys_in_blocks_with_an_online_softmax_give_the_same_attention(self):
        # Large logits on purpose: later blocks raise the row max, so what was
        # summed before must be rescaled.
        qkv = _packed_qkv(seed=18)
        with mock.patch.object(attention, "_KEY_BLOCK", 4):
            self.assertEqual(
                [(b.start, b.stop) for b in attention._key_blocks(11)],
                [(0, 4), (4, 8), (8, 11)],
            )
            got = attention._attention_per_head(qkv, 3, 8**-0.5)
        self.assertAllClose(got, _keras_attention(qkv), atol=1e-4, rtol=1e-4)

    def test_key_blocks_are_near_equal_and_cover_every_key(self):
        for length in (520, 521, 1025, 4097):
            blocks = attention._key_blocks(length)
            sizes = [len(range(length)[b]) for b in blocks]
            self.assertEqual(sum(sizes), length)
            self.assertLessEqual(max(sizes), attention._KEY_BLOCK)
            self.assertLessEqual(max(sizes) - min(sizes), len(sizes))
        # B/14 at 448 px: one block on JAX, two elsewhere (TensorFlow's
        # per-head calls).
        self.assertEqual(len(attention._key_blocks(1025)), 1 if keras.config.backend() == "jax" else 2)

    def test_a_step_holds_whole_divisors_of_the_heads_within_its_logit_budget(self):
        group = attention._group_size
        # B/14 at 448 px, 12 heads in two ranges of six: two pairs of
        # 1,025 x 1,025 logits; at 224 px all six heads (257 x 257 each).
        self.assertEqual(group(6, 1025), 2)
        self.assertEqual(group(6, 257), 6)
        self.assertEqual(group(7, 16), 7)
        # Over budget with a single pair still takes one pair per step.
        self.assertEqual(group(12, 4097), 1)

    def test_heads_are_shared_out_in_equal_ranges_up_to_the_thread_count(self):
        self.assertEqual(attention._head_ranges(12, 2), ((0, 6), (6, 6)))
        self.assertEqual(attention._head_ranges(12, 5), ((0, 3), (3, 3), (6, 3), (9, 3)))
        self.assertEqual(attention._head_ranges(3, 64), ((0, 1), (1, 1), (2, 1)))
        self.assertEqual(attention._head_ranges(7, 2), ((0, 7),))

    def test_only_tensorflow_on_cpu_takes_it(self):
        expected = keras.config.backend() == "tensorflow" and all(
            d.lower().startswith("cpu") for d in keras.distribution.list_devices()
        )
        self.assertEqual(attention.per_head_attention_is_faster(), expected)


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="TensorFlow's XLA kernels")
class TensorFlowPerHeadAttentionTest(TestCase):
    def _gradient_run(self, fn, qkv, d_out):
        import tensorflow as tf

        # Inside a graph, as a train step runs it: the compiled loop must
        # not be differentiated from outside XLA.
        @tf.function
        def run(qkv):
            with tf.GradientTape() as tape:
                tape.watch(qkv)
                out = fn(qkv)
                value = tf.reduce_sum(tf.cast(out, "float32") * d_out)
            return [out, tape.gradient(value, qkv)]

        return [ops.convert_to_numpy(ops.cast(t, "float32")) for t in run(qkv)]

    def test_values_and_gradients_in_a_graph_float32(self):
        qkv = _packed_qkv(seed=11, tokens=13, scale=1.0)
        d_out = _d_out(12, qkv)
        got = self._gradient_run(attention._xla_attention_per_head(3, 8**-0.5), qkv, d_out)
        expected = self._gradient_run(_keras_attention, qkv, d_out)
        for g, e in zip(got, expected):
            self.assertAllClose(g, e, atol=1e-4, rtol=1e-4)

    def test_values_and_gradients_in_a_graph_bfloat16(self):
        # Against float32 on the same bfloat16-rounded inputs: no more than
        # twice the error of Keras's own bfloat16 kernel, output and
        # gradient (both round the softmax weights to bfloat16).
        qkv = ops.cast(_packed_qkv(seed=11, tokens=13, scale=1 / 6), "bfloat16")
        d_out = _d_out(12, qkv)
        truth = self._gradient_run(_keras_attention, ops.cast(qkv, "float32"), d_out)
        attend = attention._xla_attention_per_head(3, 8**-0.5)
        got = self._gradient_run(attend, qkv, d_out)
        keras_bf16 = self._gradient_run(_keras_attention, qkv, d_out)
        for g, e, t in zip(got, keras_bf16, truth):
            self.assertLessEqual(np.abs(g - t).max(), 2 * np.abs(e - t).max() + 1e-3)
        self.assertEqual(keras.backend.standardize_dtype(attend(qkv).dtype), "bfloat16")

    def test_one_call_per_thread_and_an_unknown_batch_match_keras(self):
        import tensorflow as tf

        qkv = _packed_qkv(seed=16, batch=5, tokens=7, heads=4, scale=1.0)
        d_out = _d_out(17, qkv)
        expected = self._gradient_run(lambda x: _keras_attention(x, 4), qkv, d_out)
        attend = attention._xla_attention_per_head(4, 8**-0.5)
        for threads in (1, 3, 4):
            # Four heads over 1, 2 (the largest divisor up to 3) and 4 calls.
            with mock.patch.object(attention, "_inter_op_threads", return_value=threads):
                got = self._gradient_run(attend, qkv, d_out)
            for g, e in zip(got, expected):
                self.assertAllClose(g, e, atol=1e-4, rtol=1e-4)
        # A graph traced for any batch size.
        spec = tf.TensorSpec((None, 7, 96), "float32")
        unknown = tf.function(attend, input_signature=[spec])
        self.assertAllClose(unknown(qkv), expected[0], atol=1e-5, rtol=1e-5)

    def test_an_eager_gradient_tape_gets_the_written_out_gradient(self):
        # A custom training loop without tf.function: the tape must not try
        # to differentiate the compiled loop ("TensorList crossing the
        # XLA/TF boundary"), only take the custom gradient.
        qkv = _packed_qkv(seed=14, tokens=9, scale=1.0)
        d_out = _d_out(15, qkv)

        def loss(fn):
            return lambda t: ops.sum(fn(t) * d_out)

        per_head = attention._xla_attention_per_head(3, 8**-0.5)
        [got] = _grads(loss(per_head), qkv)
        [expected] = _grads(loss(_keras_attention), qkv)
        self.assertAllClose(got, expected, atol=1e-4, rtol=1e-4)

    def test_the_layer_calls_it_and_trains_through_it(self):
        layer = attention.TIPSv2Attention(24, 3)
        x = np.random.default_rng(13).standard_normal((2, 9, 24)).astype("float32")
        spy = mock.patch.object(
            attention, "_xla_attention_per_head", wraps=attention._xla_attention_per_head
        )
        with spy as calls:
            expected = layer(x)
            # Nine tokens are too short: Keras's kernel.
            self.assertEqual(calls.call_count, 0)
        with mock.patch.object(attention, "_PER_HEAD_MIN_TOKENS", 9):
            with spy as calls:
                out = layer(x)
                self.assertEqual(calls.call_count, 1)
            self.assertAllClose(out, expected, atol=1e-5, rtol=1e-5)
            # In a graph of its own ("auto"), and, when chosen, inlined into
            # an outer XLA compile (where "auto" takes the explicit path).
            chosen = attention.TIPSv2Attention(24, 3, implementation="per_head")
            for jit_compile, attending in ((False, layer), (True, chosen)):
                model = keras.Sequential([keras.Input((9, 24)), attending])
                model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
                with spy as calls:
                    history = model.fit(x, np.zeros_like(x), epochs=2, verbose=0)
                    self.assertGreater(calls.call_count, 0)
                self.assertTrue(np.isfinite(history.history["loss"]).all())

    def test_auto_takes_the_explicit_path_under_xla(self):
        import tensorflow as tf

        layer = attention.TIPSv2Attention(24, 3)
        x = tf.constant(np.random.default_rng(14).standard_normal((2, 9, 24)), tf.float32)
        expected = layer(x)
        paths = {}

        def path_of(t):
            paths[len(paths)] = layer._unmasked_path(layer.qkv(t))
            return layer(t)

        with mock.patch.object(attention, "_PER_HEAD_MIN_TOKENS", 9):
            graph = tf.function(path_of)(x)
            compiled = tf.function(path_of, jit_compile=True)(x)
        self.assertEqual(paths, {0: "per_head", 1: "explicit"})
        self.assertAllClose(graph, expected, atol=1e-5, rtol=1e-5)
        self.assertAllClose(compiled, expected, atol=1e-5, rtol=1e-5)


class AttentionImplementationTest(TestCase):
    """`TIPSv2Attention(implementation=...)`: every choice is the same
    attention, on every backend; "auto" keeps the measured rules."""

    def _layer(self, implementation):
        layer = attention.TIPSv2Attention(24, 3, implementation=implementation)
        layer.build((None, None, 24))
        return layer

    def _same_weights(self, implementation, like):
        layer = self._layer(implementation)
        layer.set_weights(like.get_weights())
        return layer

    def test_every_implementation_gives_the_same_outputs_and_gradients(self):
        x = ops.convert_to_tensor(
            np.random.default_rng(20).standard_normal((2, 11, 24)).astype("float32") * 3
        )
        weights = ops.convert_to_tensor(
            np.random.default_rng(21).standard_normal((2, 11, 24)).astype("float32")
        )
        backend_layer = self._layer("backend")
        expected_out = ops.convert_to_numpy(backend_layer(x))
        [expected_grad] = _grads(lambda t: ops.sum(backend_layer(t) * weights), x)
        # Blocks of 4 keys, so "per_head" runs its online softmax over three.
        with mock.patch.object(attention, "_KEY_BLOCK", 4):
            for implementation in ("auto", "explicit", "per_head"):
                layer = self._same_weights(implementation, backend_layer)
                out = ops.convert_to_numpy(layer(x))
                [grad] = _grads(lambda t: ops.sum(layer(t) * weights), x)
                self.assertAllClose(out, expected_out, atol=1e-5, rtol=1e-5)
                self.assertAllClose(grad, expected_grad, atol=1e-4, rtol=1e-4)

    def test_a_key_mask_takes_the_masked_path_whatever_the_choice(self):
        x = np.random.default_rng(22).standard_normal((2, 9, 24)).astype("float32")
        mask = np.array([[1] * 6 + [0] * 3, [1] * 9], "int32")
        backend_layer = self._layer("backend")
        expected = backend_layer(x, key_mask=mask)
        for implementation in ("explicit", "per_head"):
            layer = self._same_weights(implementation, backend_layer)
            self.assertAllClose(layer(x, key_mask=mask), expected, atol=1e-5, rtol=1e-5)

    def test_a_chosen_path_is_taken_whatever_the_length(self):
        x = np.random.default_rng(23).standard_normal((2, 9, 24)).astype("float32")
        spies = {
            "explicit": mock.patch.object(
                attention, "_explicit_attention", wraps=attention._explicit_attention
            ),
            "per_head": mock.patch.object(
                attention, "_attention_per_head", wraps=attention._attention_per_head
            ),
        }
        for chosen in ("explicit", "per_head", "backend"):
            layer = self._layer(chosen)
            with spies["explicit"] as explicit, spies["per_head"] as per_head:
                layer(x)
                # Nine tokens are below `_PER_HEAD_MIN_TOKENS`; the choice
                # overrides the length rule. (On TensorFlow the per-head
                # function runs inside the XLA calls' first trace.)
                self.assertEqual(explicit.call_count > 0, chosen == "explicit")
                if chosen != "per_head" or keras.config.backend() != "tensorflow":
                    self.assertEqual(per_head.call_count > 0, chosen == "per_head")

    def test_auto_keeps_the_measured_rules(self):
        x = np.random.default_rng(24).standard_normal((2, 9, 24)).astype("float32")
        layer = self._layer("auto")
        with mock.patch.object(
            attention, "_explicit_attention", wraps=attention._explicit_attention
        ) as explicit:
            layer(x)
            self.assertEqual(
                explicit.call_count > 0,
                attention.explicit_attention_is_faster() and attention._compiled_by_xla(),
            )
        if attention.per_head_attention_is_faster():
            qkv = layer.qkv(x)
            self.assertEqual(layer._unmasked_path(qkv), "backend")  # 9 tokens
            with mock.patch.object(attention, "_PER_HEAD_MIN_TOKENS", 9):
                self.assertEqual(layer._unmasked_path(qkv), "per_head")

    def test_an_unknown_implementation_is_refused_by_name(self):
        with self.assertRaisesRegex(ValueError, "'flash'.*|.*'flash'"):
            attention.TIPSv2Attention(24, 3, implementation="flash")
        from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
        from tests.conftest import tiny_backbone_kwargs

        with self.assertRaisesRegex(ValueError, "auto.*backend.*explicit.*per_head"):
            TIPSv2Backbone(**tiny_backbone_kwargs(vision_attention_implementation="eager"))

    def test_the_backbone_passes_the_choice_to_every_image_block(self):
        from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
        from tests.conftest import tiny_backbone_kwargs

        auto = TIPSv2Backbone(**tiny_backbone_kwargs())
        images = np.random.default_rng(25).random((2, 56, 56, 3)).astype("float32")
        expected = auto.encode_images(images)
        for implementation in ("backend", "explicit", "per_head"):
            backbone = TIPSv2Backbone(
                **tiny_backbone_kwargs(vision_attention_implementation=implementation)
            )
            backbone.set_weights(auto.get_weights())
            blocks = backbone.vision_encoder.blocks
            self.assertEqual(
                {b.attention.implementation for b in blocks}, {implementation}
            )
            # A runtime choice that survives the config, e.g. into presets.
            config = backbone.get_config()
            self.assertEqual(config["vision_attention_implementation"], implementation)
            restored = TIPSv2Backbone.from_config(config)
            self.assertEqual(
                restored.vision_encoder.blocks[0].attention.implementation, implementation
            )
            got = backbone.encode_images(images)
            for key in ("cls_tokens", "patch_tokens"):
                self.assertAllClose(got[key], expected[key], atol=1e-5, rtol=1e-5)
