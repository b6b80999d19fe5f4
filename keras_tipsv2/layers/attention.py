import contextlib
import contextvars
import functools
import os

import keras
from keras import ops

from keras_tipsv2.layers.fused_dense import FusedBiasDense

# How unmasked attention runs (`TIPSv2Attention(implementation=...)`).
IMPLEMENTATIONS = ("auto", "backend", "explicit", "per_head")


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class TIPSv2Attention(keras.layers.Layer):
    """Multi-head self-attention with one fused `qkv` projection.

    One fused (D, 3D) kernel ports the official PyTorch `qkv` weight 1:1 and
    costs one matmul instead of three. The query is scaled by `hd^-0.5`
    before `q @ k^T`, as in both reference implementations.

    Args:
        hidden_dim: model width D.
        num_heads: number of heads H; `hidden_dim` must divide by it.
        implementation: how unmasked attention is computed; every choice
            gives the same numbers up to float rounding, and masked
            attention (the text tower) always takes the masked path.
            - "auto" (default): the fastest measured on this backend and
              device: "per_head" from `_PER_HEAD_MIN_TOKENS` tokens for
              TensorFlow on CPU in a graph and for float32 in the public
              calls' compiled inference on JAX/CPU
              (`per_head_suits_jax_inference`), "explicit" for float32 on
              CPU wherever else XLA compiles the call (JAX train steps,
              TensorFlow under `jit_compile`), otherwise "backend".
            - "backend": the backend's fused kernel,
              `ops.dot_product_attention` (flash attention on GPU / TPU);
              on torch the same `scaled_dot_product_attention` on strided
              views (`_torch_attention`).
            - "explicit": `_explicit_attention`, the whole batch's logits
              as einsums, in the inputs' dtype.
            - "per_head": a few (batch, head) pairs at a time, keys in
              blocks with an online softmax (`_attend_groups`); on
              TensorFlow as XLA calls shared out over the cores.
            The choice is for comparing and for the devices "auto" has no
            measurement of; benchmarks/bench_inference.py `--attention`
            times them against each other.
        dtype: dtype policy.

    Call arguments:
        inputs: (B, N, D).
        key_mask: optional (B, N) bool/int, 1 = a real key. Masked keys get
            the dtype's most negative logit instead of -inf, so a row whose
            keys are all padding attends uniformly and stays finite (the
            PyTorch reference returns NaN there).
        values_only: the MaskCLIP "values trick": the attention matrix is
            replaced by the identity, so each token gets its own value
            vector through the output projection.
    """

    def __init__(self, hidden_dim, num_heads, implementation="auto", **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.implementation = _checked_implementation(implementation)
        self.head_dim = hidden_dim // num_heads
        self.qkv = FusedBiasDense(
            3 * hidden_dim, dtype=self.dtype_policy, name="qkv"
        )
        self.proj = FusedBiasDense(
            hidden_dim, dtype=self.dtype_policy, name="proj"
        )

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape[:-1] + (self.hidden_dim,))

    def _split_heads(self, x):
        # (B, N, D) -> (B, N, H, hd)
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], self.num_heads, self.head_dim))

    def call(self, inputs, key_mask=None, values_only=False):
        qkv = self.qkv(inputs)
        scale = self.head_dim**-0.5
        unmasked = key_mask is None and not values_only
        path = self._unmasked_path(qkv) if unmasked else None
        if path == "per_head":
            return self.proj(_per_head_attention(qkv, self.num_heads, scale))
        q, k, v = ops.split(qkv, 3, axis=-1)
        if values_only:
            return self.proj(v)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if keras.config.backend() == "torch" and path != "explicit":
            out = _torch_attention(q, k, v, scale, key_mask)
        elif key_mask is not None:
            logits = ops.einsum("bqhd,bkhd->bhqk", q * scale, k)
            allowed = ops.cast(key_mask, "bool")[:, None, None, :]
            logits = ops.where(
                allowed, logits, ops.cast(_most_negative(logits.dtype), logits.dtype)
            )
            weights = ops.softmax(logits, axis=-1)
            out = ops.einsum("bhqk,bkhd->bqhd", weights, v)
        elif path == "explicit":
            out = _explicit_attention(q, k, v, scale)
        else:
            # Let the backend pick its fused kernel (flash attention on
            # GPU/TPU, TensorFlow's fused CPU kernels).
            out = ops.dot_product_attention(q, k, v, scale=scale)
        shape = ops.shape(out)
        out = ops.reshape(out, (shape[0], shape[1], self.hidden_dim))
        return self.proj(out)

    def _unmasked_path(self, qkv):
        """"backend", "explicit" or "per_head" for this call's qkv."""
        if isinstance(qkv, keras.KerasTensor):
            # Symbolic construction only needs the output's shape.
            return "backend"
        if self.implementation != "auto":
            return self.implementation
        float32 = keras.backend.standardize_dtype(qkv.dtype) == "float32"
        if (
            float32
            and _COMPILED_INFERENCE.get()
            and per_head_suits_jax_inference()
            and _long_enough_for_per_head(qkv)
        ):
            return "per_head"
        if explicit_attention_is_faster() and _compiled_by_xla() and float32:
            return "explicit"
        if per_head_attention_is_faster() and _long_enough_for_per_head(qkv):
            return "per_head"
        return "backend"

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "implementation": self.implementation,
            }
        )
        return config


def _checked_implementation(implementation):
    """`implementation` if it is one of `IMPLEMENTATIONS`, else a ValueError."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"attention implementation must be one of {IMPLEMENTATIONS}; "
            f"got {implementation!r}."
        )
    return implementation


def _per_head_attention(qkv, num_heads, scale):
    """(B, N, D) attention of a packed qkv by `_attention_per_head`: as XLA
    calls shared out over the cores on TensorFlow (`_xla_attention_per_head`),
    traced into the caller's computation elsewhere (one loop, which JAX and
    torch differentiate themselves)."""
    if keras.config.backend() == "tensorflow":
        return _xla_attention_per_head(num_heads, scale)(qkv)
    return _attention_per_head(qkv, num_heads, scale)


@functools.cache
def per_head_attention_is_faster():
    """Whether unmasked attention should run `_attention_per_head` under XLA.

    True for TensorFlow on CPU only, and there for sequences of at least
    `_PER_HEAD_MIN_TOKENS` in a graph; a float32 call that XLA compiles
    takes `explicit_attention_is_faster`'s path instead.
    `ops.dot_product_attention` in a graph runs
    the whole batch's logits, softmax and weights through memory as
    separate graph ops; a few (batch, head) pairs at a time under XLA keep
    their logits in cache, and one XLA call per core, each on its own heads
    (`_xla_attention_per_head`), runs them concurrently. Measured on two Zen
    3 cores (B/14, batch 8, float32; benchmarks/RESULTS.md), the attention
    alone per layer at 1,025 tokens: 718-808 ms (Keras's kernel) -> 383-399
    (one pair per step, one XLA call) -> 276-323 (two pairs per step, two
    calls, normalised after the PV matmul) -> 10 % less again with the keys
    in two blocks (`_key_blocks`); torch's fused kernel 226-252 ms in the
    same runs. At 257 tokens 39-50 -> 24-26 ms (torch 18-22). These ran
    interleaved in one process; the host's speed drifts ~10 % between runs.
    The one-call version on JAX ran 456 vs 624 ms alone but was no faster
    inside the jitted tower on Zen 3 (2.97 vs 2.94 s at 224 px, 14.5 vs
    14.8 s at 448), nor was the grouped, key-blocked one (2.51 vs 2.57 s,
    13.43 vs 13.55 s); on Zen 5 the grouped one is 7-8 % faster at 448 px,
    so JAX's compiled inference takes it (`per_head_suits_jax_inference`).
    GPUs keep the backends' own
    kernels (not measured here). Decided once per process from the
    backend's devices.
    """
    return keras.config.backend() == "tensorflow" and cpu_only()


@functools.cache
def per_head_suits_jax_inference():
    """Whether "auto" takes `_attention_per_head` in JAX/CPU compiled inference.

    True for JAX on CPU; the public calls' compiled functions trace under
    `compiled_inference()`, train steps and `jax.grad` do not and keep
    `_explicit_attention` (the per-head loop's backward was not measured
    there). Float32 only, from `_PER_HEAD_MIN_TOKENS` tokens. B/14 batch 8
    `encode_images`, interleaved in one process (benchmarks/RESULTS.md):
    two Zen 5 cores (AVX-512), 448 px 5.23 s per-head against 5.69 s
    explicit, and 5.41 vs 5.83 s in a second process; 224 px 0.995 vs
    0.997 s (at 258 tokens both take one key block and agree exactly).
    On two Zen 3 cores the per-head tower was level (13.43 vs 13.55 s at
    448 px, 2.51 vs 2.57 s at 224). Decided once per process.
    """
    return keras.config.backend() == "jax" and cpu_only()


_COMPILED_INFERENCE = contextvars.ContextVar("tipsv2_compiled_inference", default=False)


@contextlib.contextmanager
def compiled_inference():
    """Marks what is traced inside as the public calls' compiled inference
    (`compiled_call`), where "auto" may take paths measured only there."""
    token = _COMPILED_INFERENCE.set(True)
    try:
        yield
    finally:
        _COMPILED_INFERENCE.reset(token)


# The shortest sequence that takes the per-head path. Forward and backward
# of one attention, interleaved on two Zen 3 cores, per-head ÷ Keras's
# kernel in time: 257 tokens (B/14 batch 8) 0.65 in a graph and 0.93 inside
# an outer XLA compile (as `fit` runs on TensorFlow); 129 tokens (batch 32,
# 4 heads) 0.81 and 1.9; 65 tokens (the tiny recipe's 128 crops) 0.79 and
# 1.3; 17 tokens (512 local crops) 2.0 and 2.5. Short sequences keep
# Keras's kernel, whose whole-batch logits are small enough to stay in cache.
_PER_HEAD_MIN_TOKENS = 200


def _long_enough_for_per_head(qkv):
    length = ops.shape(qkv)[1]
    return isinstance(length, int) and length >= _PER_HEAD_MIN_TOKENS


@functools.cache
def _xla_attention_per_head(num_heads, scale):
    """`_attention_per_head` of a packed (B, N, 3D) qkv as TensorFlow XLA
    calls, one per inter-op thread, forward and backward.

    Each call takes the whole qkv tensor and attends over its own range of
    heads (`_head_ranges`); the calls are independent ops of the TensorFlow
    graph, which runs them concurrently, and the (B, N, D) output is their
    concatenation along the channels. One call left a core idle in its
    loop's softmax and small dots: two calls on two Zen 3 cores ran a B/14
    layer's attention at 1,025 tokens in 292-300 ms instead of 360-368, at
    257 tokens in 28-34 instead of 39-50 (more calls than cores: no
    better). The calls share out heads, not examples, so that one image or
    a batch of unknown size (a graph traced for any batch) is shared out as
    well; taking q, k and v apart inside XLA instead of in the graph
    measured level (tower at 448 px 14.1 vs 14.3 s, interleaved).

    The backward is written out (`_attention_per_head_grads`) because
    TensorFlow cannot differentiate a compiled loop from outside XLA
    ("Support for TensorList crossing the XLA/TF boundary is not
    implemented"), and because it keeps the same locality: nothing but qkv
    is saved for it, the weights are recomputed group by group.
    """
    import tensorflow as tf

    def compiled(fn):
        return functools.cache(
            lambda heads: tf.function(
                lambda *t: fn(*t, num_heads, scale, heads), jit_compile=True
            )
        )

    forward = compiled(_attention_per_head)
    backward = compiled(_attention_per_head_grads)

    @tf.custom_gradient
    def attend(qkv):
        ranges = _head_ranges(num_heads, _inter_op_threads())
        # Out of sight of an eager GradientTape, which would otherwise try
        # to differentiate the compiled loop itself (the error above);
        # `grads` gives the gradient.
        held = tf.stop_gradient(qkv)
        out = tf.concat([forward(r)(held) for r in ranges], axis=-1)

        def grads(d_out):
            d_qkv = [backward(r)(qkv, d_out) for r in ranges]
            # Each range's (B, N, 3, heads x hd) gradient, back in qkv's
            # (B, N, 3D) layout.
            return ops.reshape(tf.concat(d_qkv, axis=-1), ops.shape(qkv))

        return out, grads

    return attend


def _head_ranges(num_heads, threads):
    """Consecutive equal (first, count) ranges of heads, as many as the
    largest divisor of `num_heads` not above `threads`."""
    parts = max(p for p in range(1, num_heads + 1) if num_heads % p == 0 and p <= threads)
    count = num_heads // parts
    return tuple((i * count, count) for i in range(parts))


def _inter_op_threads():
    import tensorflow as tf

    threads = tf.config.threading.get_inter_op_parallelism_threads()
    if threads:
        return threads
    # The cores this process may run on (a container's share, not the
    # host's); macOS has no affinity call.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_only():
    """Whether every device the backend sees is a CPU."""
    if keras.config.backend() == "torch":
        # Keras's torch backend lists no devices; it computes on one.
        from keras.src.backend.torch.core import get_device

        return str(get_device()).startswith("cpu")
    devices = keras.distribution.list_devices()
    return bool(devices) and all(d.lower().startswith("cpu") for d in devices)


@functools.cache
def explicit_attention_is_faster():
    """Whether unmasked attention under XLA should skip `ops.dot_product_attention`.

    True for JAX and TensorFlow on CPU; "auto" takes `_explicit_attention`
    where this holds and XLA compiles the call (`_compiled_by_xla`), for
    float32. Measured on JAX (benchmarks/RESULTS.md, B/14, batch 8, 1,026
    tokens): XLA:CPU compiles `ops.dot_product_attention`'s logits matmul,
    max, exp and sum into one slow dot fusion, 1.13 s per layer against
    0.76 s for `_explicit_attention`, and the whole tower ran 17.3 s ->
    14.1 s. With YNNPACK's dots off (as the public calls compile on
    JAX/CPU, `compiled_call.jax_compiler_options`) it still wins at 1,026
    tokens (tower 11.1 vs 12.2 s) and is within noise of the fused op at
    258 (2.21 vs 2.12 s), so one rule serves both. TensorFlow's image tower
    under `jit_compile` on two Zen 3 cores, B/14 batch 8 at 448 px: 15.1 s
    with it against 16.6 s with the per-head XLA calls (the graph's rule,
    `per_head_attention_is_faster`), level at 224 px (2.88 vs 2.93 s); on
    AVX-512 CPUs the graph beat both, so there the image tower's calls run
    as a graph (`compiled_call.xla_suits_the_image_tower`).
    In a TensorFlow graph outside XLA it is the slowest choice (21.7 vs
    17.1 s), and torch's kernel is faster than it (0.43 vs 0.85 s); GPUs and
    TPUs run flash attention. Decided once per process from the backend's
    devices. Only float32 takes this path: the backend kernels keep a
    float32 softmax for half-precision inputs.
    """
    return keras.config.backend() in ("jax", "tensorflow") and cpu_only()


def _compiled_by_xla():
    """Whether the call being traced is compiled by XLA: always on JAX; on
    TensorFlow inside a `tf.function(jit_compile=True)` (also nested)."""
    backend = keras.config.backend()
    if backend != "tensorflow":
        return backend == "jax"
    import tensorflow as tf

    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # Moved in a later TensorFlow: keep the graph's rule.
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


# The most float32 logits one loop step of `_attend_groups` holds (pairs x
# N x N, ~10 MB). Measured on two Zen 3 cores, B/14 batch 8: at 1,025
# tokens two pairs per step ran the layer's attention in 287-309 ms, one in
# 307-360, three or four in 309-349; at 257 tokens 4 to 12 pairs were level
# (22-25 ms) and two slower (26-30). (Measured before `_key_blocks`, which
# at 1,025 tokens halves what a step holds at once.)
_STEP_LOGITS = 2_500_000


def _group_size(heads, length):
    """Pairs per loop step: the largest divisor of `heads` whose (N, N)
    logits fit `_STEP_LOGITS` together (1 when N is unknown)."""
    if not isinstance(length, int):
        return 1
    fits = [g for g in range(1, heads + 1) if heads % g == 0]
    return max(g for g in fits if g == 1 or g * length * length <= _STEP_LOGITS)


def _attention_per_head(qkv, num_heads, scale, heads=None):
    """softmax(q k^T * scale) v from a packed (B, N, 3D) qkv, in heads.

    Returns (B, N, count x hd) for the heads range `heads` = (first, count),
    all heads by default, a few (batch, head) pairs per loop step
    (`_group_size`).
    """
    q, k, v = _grouped_qkv(qkv, num_heads, heads)
    return _ungrouped(_attend_groups(q, k, v, scale), qkv)


def _attention_per_head_grads(qkv, d_out, num_heads, scale, heads=None):
    """Gradient of `_attention_per_head` w.r.t. qkv, for one heads range.

    `d_out` is the whole (B, N, D) output gradient. Returns (B, N, 3, count
    x hd): q, k and v's gradients for those heads; the ranges concatenated
    along the last axis and reshaped are the (B, N, 3D) gradient.
    """
    grads = _attend_groups_grads(
        *_grouped_qkv(qkv, num_heads, heads),
        _grouped_heads(d_out, num_heads, heads),
        scale,
    )
    return ops.stack([_ungrouped(g, qkv) for g in grads], axis=2)


def _grouped_qkv(qkv, num_heads, heads):
    """q, k and v of a heads range of packed (B, N, 3D) qkv, as `_grouped_heads`."""
    return tuple(_grouped_heads(t, num_heads, heads) for t in ops.split(qkv, 3, axis=-1))


def _grouped_heads(x, num_heads, heads):
    """The heads range `heads` = (first, count) of a (B, N, H x hd) tensor, all
    heads by default, in groups of `_group_size` pairs (`_grouped`)."""
    first, count = heads or (0, num_heads)
    batch, length, channels = ops.shape(x)
    x = ops.reshape(x, (batch, length, num_heads, channels // num_heads))
    return _grouped(x[:, :, first : first + count], _group_size(count, length))


def _grouped(x, group):
    """(B, N, h, hd) -> (B * h / group, group, N, hd): groups of (batch, head)
    pairs, each group within one example."""
    _, length, _, head_dim = ops.shape(x)
    pairs = ops.transpose(x, (0, 2, 1, 3))
    return ops.reshape(pairs, (-1, group, length, head_dim))


def _ungrouped(x, qkv):
    """(B * h / g, g, N, hd) groups back to (B, N, h x hd), the batch and
    length of `qkv`."""
    batch, length, _ = ops.shape(qkv)
    head_dim = ops.shape(x)[-1]
    x = ops.transpose(ops.reshape(x, (batch, -1, length, head_dim)), (0, 2, 1, 3))
    return ops.reshape(x, (batch, length, -1))


def _attend_groups(q, k, v, scale):
    """Attention of (G, g, N, hd) groups of pairs, one group per loop step.

    A group's logits stay in cache through the softmax and the PV matmul,
    where the whole batch's (B, H, N, N) do not (400 MB at 1,025 tokens,
    batch 8). Within a step the keys go in blocks (`_key_blocks`) with an
    online softmax, as flash attention does: each block's exponentials are
    taken from the running row max, and what was summed before is rescaled
    when the max grows. The division by the row sums comes after the PV
    matmuls, on the (N, hd) output instead of the (N, N) weights. Sums and
    output accumulate in float32; for half-precision inputs the
    exponentials are rounded before their matmul, as
    `ops.dot_product_attention` rounds its weights.
    """
    length = ops.shape(q)[-2]

    def attend(group):
        qi, ki, vi = group
        peak = total = sums = None
        for keys in _key_blocks(length):
            logits = _group_logits(qi, ki[:, keys], scale)
            block_peak = ops.max(logits, axis=-1, keepdims=True)
            if peak is not None:
                block_peak = ops.maximum(peak, block_peak)
                rescale = ops.exp(peak - block_peak)
                total, sums = total * rescale, sums * rescale
            exps = ops.exp(logits - block_peak)
            out = ops.matmul(ops.cast(exps, vi.dtype), vi[:, keys])
            out = ops.cast(out, "float32")
            block_sums = ops.sum(exps, axis=-1, keepdims=True)
            total = out if total is None else total + out
            sums = block_sums if sums is None else sums + block_sums
            peak = block_peak
        return ops.cast(total / sums, vi.dtype)

    return ops.map(attend, (q, k, v))


# The most keys per block of `_attend_groups`'s online softmax. Measured on
# two Zen 3 cores, B/14 batch 8 at 1,025 tokens, the layer's attention in
# TensorFlow's per-head calls: one block 370-390 ms, blocks of 520 keys
# 325-341, of 256 or 344 326-363; on two Zen 5 cores level (90 vs 93 ms,
# one block against 520). JAX runs the loop on both cores at once, where
# one block of 1,026 keys was faster on Zen 5: 156-162 ms against 172, and
# the tower at 448 px 4.71 s against 5.03 (benchmarks/RESULTS.md).
_KEY_BLOCK = 1100 if keras.config.backend() == "jax" else 520


def _key_blocks(length):
    """Slices of near-equal key blocks of at most `_KEY_BLOCK` keys (one
    block when the length is unknown)."""
    if not isinstance(length, int) or length <= _KEY_BLOCK:
        return [slice(None)]
    count = -(-length // _KEY_BLOCK)
    size = -(-length // count)
    return [slice(start, min(start + size, length)) for start in range(0, length, size)]


def _attend_groups_grads(q, k, v, d_out, scale):
    """Gradients of `_attend_groups` w.r.t. q, k and v, group by group.

    With P = softmax(s q k^T) and O = P v: dV = P^T dO, dP = dO v^T,
    dS = P * (dP - rowsum(dP * P)), dQ = s dS k, dK = s dS^T q. P and dS in
    float32, rounded to the inputs' dtype before their matmuls, as the
    forward rounds its exponentials.
    """

    def grads(group):
        qi, ki, vi, gi = group
        weights = ops.softmax(_group_logits(qi, ki, scale), axis=-1)
        d_v = ops.matmul(_transposed(ops.cast(weights, vi.dtype)), gi)
        d_weights = ops.cast(ops.matmul(gi, _transposed(vi)), "float32")
        d_logits = weights * (
            d_weights - ops.sum(d_weights * weights, axis=-1, keepdims=True)
        )
        d_logits = ops.cast(d_logits * scale, qi.dtype)
        return (
            ops.matmul(d_logits, ki),
            ops.matmul(_transposed(d_logits), qi),
            d_v,
        )

    return ops.map(grads, (q, k, v, d_out))


def _transposed(x):
    return ops.swapaxes(x, -1, -2)


def _group_logits(qi, ki, scale):
    """Float32 s q k^T of a group's (g, N, hd) q and k.

    A float32 query is scaled before the matmul, as both references do: a
    pass over (g, N, hd) instead of over the (g, N, N) logits, which XLA:CPU
    runs as a loop of its own between the matmul and the row max. One B/14
    layer's attention, batch 8, two Zen 5 cores, interleaved: 1,026 tokens
    193-204 -> 156-172 ms on JAX, 109 -> 93 ms in TensorFlow's per-head
    calls; 258 tokens 19.3 -> 12.1 ms on JAX, level on TensorFlow
    (benchmarks/RESULTS.md). Half-precision products are cast to float32
    first and scaled there.
    """
    if keras.backend.standardize_dtype(qi.dtype) == "float32":
        return ops.matmul(qi * scale, _transposed(ki))
    return ops.cast(ops.matmul(qi, _transposed(ki)), "float32") * scale


def _explicit_attention(q, k, v, scale):
    """softmax(q k^T * scale) v on (B, N, H, hd), normalised after the PV matmul.

    Dividing the (B, N, H, hd) output by the row sums, instead of the
    (B, H, N, N) weights, saves one pass over the largest tensor. The row
    max is a constant shift of the logits that softmax cancels, so no
    gradient flows through it (as in every stable softmax).
    """
    logits = ops.einsum("bqhd,bkhd->bhqk", q * ops.cast(scale, q.dtype), k)
    shift = ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    weights = ops.exp(logits - shift)
    out = ops.einsum("bhqk,bkhd->bqhd", weights, v)
    row_sums = ops.transpose(ops.sum(weights, axis=-1), (0, 2, 1))  # (B, N, H)
    return out / row_sums[..., None]


def _torch_attention(q, k, v, scale, key_mask=None):
    """torch's fused attention on (B, N, H, hd) views, without copies.

    `ops.dot_product_attention` on torch copies q, k and v into contiguous
    (B, H, N, hd) tensors before calling the same kernel. The kernel reads
    the strided (B, H, N, hd) views of the qkv projection just as well, so
    the copies are pure cost: measured on two cores (B/14, batch 8,
    float32), 13.6 vs 18.9 ms per layer at 257 tokens and 180 vs 201 ms at
    1,025, the tower's whole attention 0.22 -> 0.17 s at 224 px
    (benchmarks/RESULTS.md). Outputs are bit-identical. On GPU torch picks
    its flash or memory-efficient kernel from the same call.

    A key mask becomes an additive (B, 1, 1, N) bias of the dtype's most
    negative logit (a boolean mask gives NaN for an example without a real
    key). The other path replaces masked logits by that value instead of
    adding it; the two agree exactly where a row has a real key, and for an
    example with none the query is zeroed, so its logits are all equal and
    it attends uniformly, as there.
    """
    import torch

    bias = None
    if key_mask is not None:
        allowed = ops.cast(key_mask, "bool")
        has_keys = ops.any(allowed, axis=-1)[:, None, None, None]
        q = ops.where(has_keys, q, ops.zeros((), q.dtype))
        bias = ops.where(
            allowed[:, None, None, :],
            ops.zeros((), q.dtype),
            ops.full((), _most_negative(q.dtype), q.dtype),
        )
    q, k, v = (ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, scale=scale
    )
    return ops.transpose(out, (0, 2, 1, 3))


def _most_negative(dtype):
    # Large enough to zero a softmax term in every float dtype, small enough
    # not to overflow float16 / bfloat16.
    return -3.0e4 if "16" in str(dtype) else -1.0e9
