"""Compiled inference for the models' public calls.

KerasHub's `make_generate_function` pattern: a public call (`encode_images`,
`encode_text`, `get_intermediate_layers`, the segmenter's post-processing)
runs through one function per method and static configuration, compiled the
backend's way and cached on the model; the backend traces it once per input
shape. Called eagerly op by op, JAX dispatches every op from Python and is
many times slower than the same call under `jax.jit`.

- JAX: `jax.jit` of the call with the layer's variables as arguments,
  through a `keras.StatelessScope`, so updated weights are always read.
- TensorFlow: `tf.function(jit_compile=True)`.
- torch: eager, torch's native mode (nothing to compile), and like any
  torch module it records gradients unless called under `torch.no_grad()`.

The compiled path is for concrete inputs run eagerly at inference; symbolic
inputs, calls inside a JAX trace or a TensorFlow graph (train steps), and
`training=True` run the layers as they are. Which faster kernels a call may
take is `keras_tipsv2.kernels`'s decision; the cache is keyed by it.
"""

import collections
import contextlib

import keras

from keras_tipsv2.kernels import policy

# Compiled functions kept per owner; keys can carry image sizes (one per
# geometry in an evaluation), so the least recently used are dropped.
CACHE_SIZE = 16
_CACHE_ATTRIBUTE = "_tipsv2_compiled_functions"


def runs_eagerly(*tensors):
    """Whether a call on these inputs runs from Python as it is made.

    Args:
        *tensors: the call's tensor arguments (None entries allowed).

    Returns:
        False for symbolic inputs, inside a JAX trace, a TensorFlow graph or
        `torch.compile`'s tracing; True otherwise.
    """
    tensors = [t for t in tensors if t is not None]
    if any(isinstance(t, keras.KerasTensor) for t in tensors):
        return False
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return not any(isinstance(t, jax.core.Tracer) for t in tensors)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    import torch

    return not torch.compiler.is_compiling()


def compiled(owner, key, fn, variables=()):
    """`fn` compiled the backend's way, cached on `owner` under `key`.

    Args:
        owner: any object with a `__dict__` (the model); the cache lives on it.
        key: hashable; everything static that `fn` closes over (method name,
            values trick, indices, whether masks are given). The active
            kernels are added to it.
        fn: a function of tensors (None entries allowed) that reads
            `variables` and no other state.
        variables: the Keras variables `fn` reads (JAX passes their current
            values into the compiled function on every call).

    Returns:
        A callable taking the same arguments as `fn`.
    """
    cache = owner.__dict__.setdefault(_CACHE_ATTRIBUTE, collections.OrderedDict())
    key = (key, policy.state())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = _compile(fn, list(variables))
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return cache[key]


def _compile(fn, variables):
    backend = keras.config.backend()
    if backend == "jax":
        return _jax_compiled(fn, variables)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def _jax_compiled(fn, variables):
    import jax

    @jax.jit
    def pure(values, tensors):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*tensors)

    def call(*tensors):
        return pure([v.value for v in variables], tensors)

    # The lowered computation for these inputs, to read what XLA compiles.
    call.lower = lambda *tensors: pure.lower([v.value for v in variables], tensors)
    return call


def inference_scope():
    """A context in which the backend records nothing for gradients.

    `torch.no_grad()` on torch, nothing elsewhere (JAX and TensorFlow record
    only under `jax.grad` / a `GradientTape`). For calls whose results leave
    as numpy or are kept as constants (the segmenter's maps, class text
    embeddings): recording autograd's graph costs time and keeps every
    activation alive as long as the result.
    """
    if keras.config.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
