"""Which kernels run: the one place that reads backend, device and settings.

A kernel is a faster way to compute what the layers already compute, kept
only where an A/B of the whole tower measured at least 10 %, each CPU it
was measured on listed in benchmarks/RESULTS.md ("Kernel A/B on the image
tower, by CPU"). The platform is read once per process; the choice can be
printed (`describe()`) and switched off, all at once or per kernel
(`set_enabled`, or `KERAS_TIPSV2_KERNELS=off` in the environment).
Training never takes them: only the models' inference calls ask.
"""

import functools
import os

import keras

from keras_tipsv2.kernels import cpu_attention

ENVIRONMENT_VARIABLE = "KERAS_TIPSV2_KERNELS"

# The image tower's attention per backend; its keys are the backends
# `cpu_attention` runs on. On TensorFlow only long sequences take the loop:
# on both Xeons measured it paid at 448 px and never at 224 px, where one
# step holds all of an image's heads.
_ATTENTION = {
    "jax": cpu_attention.attention_by_head_groups,
    "tensorflow": cpu_attention.attention_for_long_sequences,
}

# name -> (backends, what it does). Each applies on CPU-only hosts.
KERNELS = {
    "cpu_attention": (
        tuple(_ATTENTION),
        "float32 image attention a few heads at a time under XLA (kernels.cpu_attention)",
    ),
}

_switched_off = set()


def _from_environment():
    value = os.environ.get(ENVIRONMENT_VARIABLE, "on").strip().lower()
    if value in ("", "on", "1", "true"):
        return set()
    if value in ("off", "0", "false"):
        return set(KERNELS)
    unknown = set(value.split(",")) - {f"-{name}" for name in KERNELS}
    if unknown:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE} must be 'on', 'off' or a comma-separated "
            f"list of '-name' with names from {sorted(KERNELS)}; got {value!r}."
        )
    return {name[1:] for name in value.split(",")}


@functools.cache
def _cpu_only():
    """Whether the backend computes on CPU only (read once per process)."""
    if keras.config.backend() == "torch":
        # Keras's torch backend places tensors on its one device.
        return keras.ops.convert_to_tensor(0.0).device.type == "cpu"
    devices = keras.distribution.list_devices()
    return bool(devices) and all(d.lower().startswith("cpu") for d in devices)


@functools.cache
def _platform_allows(name):
    return keras.config.backend() in KERNELS[name][0] and _cpu_only()


def _checked(name):
    if name not in KERNELS:
        raise ValueError(f"Unknown kernel {name!r}; kernels are {sorted(KERNELS)}.")
    return name


def active(name):
    """Whether kernel `name` (a key of `KERNELS`) runs in this process."""
    _checked(name)
    return (
        name not in _switched_off
        and name not in _from_environment()
        and _platform_allows(name)
    )


def state():
    """The names of the active kernels, as a hashable key: compiled
    functions are cached per state, so switching kernels recompiles."""
    return tuple(name for name in KERNELS if active(name))


def set_enabled(enabled, names=None):
    """Switches kernels on or off for this process.

    Args:
        enabled: bool.
        names: kernel names (keys of `KERNELS`); None for all of them.
            Switching on only lifts `set_enabled(False)`; a kernel still
            runs only where its platform allows and the environment does not
            switch it off.

    Example:
    ```python
    keras_tipsv2.kernels.set_enabled(False)   # plain Keras everywhere
    ```
    """
    names = list(KERNELS) if names is None else [_checked(n) for n in names]
    if enabled:
        _switched_off.difference_update(names)
    else:
        _switched_off.update(names)


def describe():
    """A table of every kernel: on or off in this process, and why.

    Returns:
        A multi-line string.

    Example:
    ```python
    print(keras_tipsv2.kernels.describe())
    ```
    """
    platform = f"backend {keras.config.backend()}, " + (
        "CPU only" if _cpu_only() else "accelerator"
    )
    lines = [f"keras_tipsv2 kernels ({platform}):"]
    for name, (backends, what) in KERNELS.items():
        if active(name):
            status = "on"
        elif not _platform_allows(name):
            status = "off (platform)"
        else:
            status = "off (switched off)"
        lines.append(f"  {name:20s} {status:18s} {what}; {'/'.join(backends)} on CPU")
    return "\n".join(lines)


def attention_fn(dtype):
    """The image tower's `attention_fn` for compiled inference in `dtype`,
    or None for `ops.dot_product_attention`."""
    if active("cpu_attention") and keras.backend.standardize_dtype(dtype) == "float32":
        return _ATTENTION[keras.config.backend()]
    return None
