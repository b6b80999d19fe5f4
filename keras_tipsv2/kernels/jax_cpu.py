"""XLA:CPU compiler options for JAX's compiled inference.

jaxlib 0.10 hands every standalone dot on CPU to YNNPACK by default; XLA's
own dot emitter ran the towers' matmuls faster (benchmarks/RESULTS.md), so
compiled inference asks for it with an option. The option is experimental:
a jaxlib that does not know it rejects it when compiling, so it is tried
once on a one-op function and dropped if refused.
"""

import functools

DOT_EMITTER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def dot_emitter_options():
    """`DOT_EMITTER_OPTIONS` if this jaxlib accepts them, else None."""
    import jax

    try:
        jax.jit(lambda x: x + 1, compiler_options=DOT_EMITTER_OPTIONS)(0.0)
    except jax.errors.JaxRuntimeError:
        return None
    return dict(DOT_EMITTER_OPTIONS)
