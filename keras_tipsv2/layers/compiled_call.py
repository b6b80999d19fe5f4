"""Compiled inference for the backbone's public calls (encode_images & co).

Why this exists (benchmarks/RESULTS.md has the numbers): called eagerly,
`encode_images` on JAX dispatches every op from Python, one at a time, and
is many times slower than the same layer under `jax.jit`; the first eager
call also compiles each op separately. Users call `encode_images` /
`encode_text` directly, in loops, so the public calls compile themselves
once per static configuration (the backend re-traces per input shape and
keeps each trace). `compiled_function` does the same for post-processing
that reads no variables (the zero-shot segmenter's), and `inference_scope`
turns off torch's gradient recording where results cannot need it.

Outside training, backend-specific code lives only here, in
`fused_dense.py`, in `attention.py` (the JAX/CPU attention choice, the
copy-free torch kernel call, TensorFlow/CPU's per-head XLA attention), in
`layer_norm.py` (XLA on TensorFlow, torch's kernel without casts) and in
`functional.gelu` (XLA-compiled on TensorFlow), each because a measured
speed-up demands it:
- JAX: `jax.jit` of the call with the layer's variables as arguments,
  through a `StatelessScope` (the same mechanism `Layer.stateless_call`
  uses), so updated weights are always read. On CPU it is compiled with
  XLA's YNNPACK dot fusions off (`jax_compiler_options`), and traced under
  `attention.compiled_inference()` (per-head attention on CPU).
- TensorFlow: `tf.function`, traced per shape; the image tower's calls
  under XLA (`jit_compile`) where that measured faster
  (`xla_suits_the_image_tower`), the text tower's as a graph.
- torch: eager is torch's native mode; nothing is compiled.

The compiled path is only taken for eager, concrete inputs at inference:
inside a JAX trace or `StatelessScope` (train steps, `jax.grad`), in a
TensorFlow graph, for symbolic inputs, or when training, the plain call
runs, so gradients and train steps behave exactly as before.
"""

import collections
import contextlib
import functools

import keras

from keras_tipsv2.layers import attention

_CACHE_ATTRIBUTE = "_tipsv2_compiled_calls"
# Compiled functions kept per owner by `compiled_function`.
FUNCTION_CACHE_SIZE = 16


def can_compile(*tensors):
    """Whether the compiled path applies to a call on these inputs: JAX and
    TensorFlow, run eagerly (torch runs its ops as they come)."""
    return keras.config.backend() != "torch" and runs_eagerly(*tensors)


def runs_eagerly(*tensors):
    """Whether a call on these inputs runs from Python as it is made: not
    symbolic, not inside a JAX trace or `StatelessScope`, a TensorFlow
    graph or `torch.compile`'s tracing."""
    if any(isinstance(t, keras.KerasTensor) for t in tensors):
        return False
    backend = keras.config.backend()
    if backend == "jax":
        import jax
        from keras.src.backend.common.stateless_scope import in_stateless_scope

        return not in_stateless_scope() and not any(
            isinstance(t, jax.core.Tracer) for t in tensors
        )
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "torch":
        import torch

        return not torch.compiler.is_compiling()
    return False


def compiled_call(layer, key, fn, *tensors, xla=False):
    """Runs `fn(*tensors)` compiled, reusing one compiled function per `key`.

    Args:
        layer: the layer whose variables `fn` reads; the cache lives on it.
        key: hashable; everything static that `fn` closes over (method
            name, values_trick, indices, whether masks are given).
        fn: a pure function of `tensors` (None entries allowed).
        tensors: the tensor arguments, traced per shape.
        xla: on TensorFlow, compile the graph with XLA (`jit_compile`);
            JAX always does. The image tower's calls pass
            `xla_suits_the_image_tower()`.
    """
    return _cached(layer, key, lambda: _compile(layer, fn, xla))(*tensors)


def compiled_function(owner, key, fn, *tensors):
    """Runs a function that reads no variables, compiled where it can be.

    For the post-processing around the public calls (the segmenter's
    per-window resize and softmax, the final upsample and argmax): on JAX,
    dispatched op by op from Python, those steps took 1.47 s beside the
    two-window tower call of a 448x672 image against 0.37 s on TensorFlow,
    and 0.54 s compiled (benchmarks/RESULTS.md). Falls back to the plain
    call wherever `can_compile` says no.

    Args:
        owner: any object with a `__dict__`; the cache lives on it.
        key: hashable; everything static that `fn` closes over.
        fn: a pure function of `tensors`.
        tensors: the tensor arguments, traced per shape.
    """
    if not can_compile(*tensors):
        return fn(*tensors)
    # Keys here can carry input geometry (one per image size in an
    # evaluation), so the least recently used entries are dropped.
    compiled = _cached(owner, key, lambda: _compile(None, fn), FUNCTION_CACHE_SIZE)
    return compiled(*tensors)


# The most image tokens one compiled image-tower call takes on JAX/CPU
# (`images_per_call`).
_CALL_TOKENS = 600

# The largest activation one text-tower call makes on torch/CPU
# (`texts_per_call`).
_TORCH_CALL_BYTES = 26 * 10**6


def images_per_call(patches_per_image):
    """How many images one image-tower call should take; None for all.

    On JAX/CPU a batch is cut into calls of at most `_CALL_TOKENS` tokens
    (at least one image each; `call_in_parts`). XLA:CPU allocates a call's
    temporary buffers afresh on every run, and the larger ones come straight
    from the kernel, page by page: B/14 batch 8 at 448 px spent 1.07 s of
    system time in one call, 0.27 s in eight calls of one image, and ran
    5.44 -> 4.94 s; at 224 px 1.045 -> 0.946 s in calls of two images, 0.957
    in calls of four (two Zen 5 cores, benchmarks/RESULTS.md). TensorFlow's
    allocator keeps its memory (no page faults there, and calls of one or
    two images measured level) and GPUs were not measured: one call. So
    does torch: calls of two images at 448 px ran 8 % faster in a process
    holding one model (6.24 -> 5.74 s) and 3-4 % slower in the benchmark's
    process, which holds four and faults little (5.28 -> 5.43 s;
    `texts_per_call` has the mechanism).
    """
    if _cpu_backend() != "jax":
        return None
    return _examples(_CALL_TOKENS, patches_per_image)


def texts_per_call(length, widest_row_bytes):
    """How many texts one text-tower call should take; None for all.

    torch/CPU only: calls whose widest activation (`widest_row_bytes` per
    token: the MLP's hidden layer or the qkv projection) stays within
    `_TORCH_CALL_BYTES`, 2,115 tokens for B/14 in float32. Eager torch
    mallocs every activation; glibc serves blocks over 32 MiB from fresh
    mappings, faulted in page by page on every call, and smaller ones from
    its heap, which it keeps between layers while they stay small. B/14's
    text tower, batch 64 of 64 tokens (50 MB MLP activations), in calls of
    33: 4.03 -> 3.72 s and 3.99 -> 3.74 s in a process holding one model,
    3.77 -> 3.54 and 3.87 -> 3.84 s in the benchmark's; with oneDNN's
    matmuls (`fused_dense`) 2.04 -> 1.85 s and, in the benchmark's
    process, 1.89 -> 1.95 s (two Zen 5 cores, benchmarks/RESULTS.md). JAX's
    text calls were not measured in parts.
    """
    if _cpu_backend() != "torch":
        return None
    return _examples(_TORCH_CALL_BYTES // widest_row_bytes, length)


def _examples(tokens, tokens_per_example):
    return max(1, tokens // max(1, tokens_per_example))


@functools.cache
def _cpu_backend():
    """The backend's name where it runs on CPU only, else None."""
    return keras.config.backend() if attention.cpu_only() else None


def call_in_parts(fn, size, *tensors):
    """`fn(*tensors)` over consecutive slices of at most `size` examples,
    the outputs (any nest) concatenated along the batch; None entries of
    `tensors` pass through. One call when `size` is None or covers the
    batch."""
    batch = tensors[0].shape[0]
    if size is None or batch is None or batch <= size:
        return fn(*tensors)
    parts = [
        fn(*(None if t is None else t[start : start + size] for t in tensors))
        for start in range(0, batch, size)
    ]
    return keras.tree.map_structure(lambda *xs: keras.ops.concatenate(xs, axis=0), *parts)


def _cached(owner, key, compile_fn, limit=None):
    """The compiled function cached on `owner` under `key`, compiling it
    with `compile_fn()` on a miss; beyond `limit` entries the least
    recently used one is dropped."""
    cache = owner.__dict__.setdefault(_CACHE_ATTRIBUTE, collections.OrderedDict())
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = compile_fn()
        while limit is not None and len(cache) > limit:
            cache.popitem(last=False)
    return cache[key]


@functools.cache
def xla_suits_the_image_tower():
    """Whether TensorFlow should compile the image tower's public calls with XLA.

    Under XLA "auto" attention is the explicit float32 softmax, in a plain
    graph the per-head XLA calls (`attention.explicit_attention_is_faster`,
    `attention.per_head_attention_is_faster`); which whole tower is faster
    depends on the CPU's vector units. B/14, batch 8, float32,
    `encode_images` as a graph against XLA, interleaved in one process
    (benchmarks/RESULTS.md):
    - two Zen 3 cores (AVX2): 448 px 16.6 s as a graph, 15.1 s under XLA;
      level at 224 px (2.93 vs 2.88 s);
    - two Zen 5 cores (AVX-512): 448 px 4.37 s as a graph, 4.66 s under
      XLA; 224 px 0.884 vs 0.865 s (noise). The graph's matmuls are
      oneDNN's, which use AVX-512; XLA:CPU's gained less from it.
    So XLA everywhere except on CPU-only hosts with AVX-512. GPUs and TPUs
    were not measured and keep XLA, which fuses what a graph runs op by op.
    Decided once per process.
    """
    return not (attention.cpu_only() and _cpu_has_avx512())


def _cpu_has_avx512():
    """Whether this CPU has AVX-512 (Foundation), as numpy's dispatcher saw it."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return bool(__cpu_features__.get("AVX512F", False))


def inference_scope():
    """A context in which the backend records nothing for gradients.

    `torch.no_grad()` on torch, nothing elsewhere (JAX and TensorFlow
    record only under `jax.grad` / a `GradientTape`). For calls whose
    results leave as numpy or are kept as constants (the segmenter's maps,
    class text embeddings): on torch, recording autograd's graph costs time
    and keeps every activation alive as long as the result.
    """
    if keras.config.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _compile(layer, fn, xla=False):
    """`fn` compiled the backend's way; `layer` (or None) owns what it reads;
    `xla` compiles TensorFlow's graph with XLA."""
    backend = keras.config.backend()
    if backend == "jax":
        return _jax_function(layer, fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=xla)
    return fn


def _jax_function(layer, fn):
    import jax

    variables = [] if layer is None else list(layer.variables)

    @functools.partial(jax.jit, compiler_options=jax_compiler_options())
    def pure(values, tensors):
        with attention.compiled_inference(), keras.StatelessScope(
            state_mapping=list(zip(variables, values))
        ):
            return fn(*tensors)

    def call(*tensors):
        return pure([v.value for v in variables], tensors)

    # The lowered computation for these inputs, to read what XLA compiles.
    call.lower = lambda *tensors: pure.lower([v.value for v in variables], tensors)
    return call


# XLA:CPU (jaxlib 0.10) hands every standalone dot to YNNPACK by default.
# Measured on this project's 2-core AVX-512 CPU (benchmarks/RESULTS.md):
# the B/14 MLP's matmuls ran at 152-158 GFLOP/s that way and 178-186 with
# the option below (XLA's own dot emitter), and the whole B/14 image tower
# 14.6 -> 11.1 s at 448 px, 2.53 -> 2.21 s at 224 px, float32; bfloat16
# dots gained too (139 -> 176 GFLOP/s). Outputs agree to 4e-6.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def jax_compiler_options():
    """XLA compiler options for the compiled calls on JAX, or None.

    The YNNPACK option on CPU only (other platforms compile as JAX
    chooses). It is an experimental XLA option: a jaxlib that does not know
    it rejects it when compiling, so it is tried once on a one-op function
    and dropped if refused, leaving the default compilation.
    """
    import jax

    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS)(0.0)
    except jax.errors.JaxRuntimeError:
        return None
    return dict(_CPU_OPTIONS)
