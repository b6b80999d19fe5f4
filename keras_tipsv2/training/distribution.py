"""Scale-out with `keras.distribution` (JAX backend): data and model parallelism.

Data parallelism replicates every weight and splits the global batch over
the devices; under JAX the train step is one SPMD program, so batch-wide
quantities (the contrastive logits over the whole global batch, the DINO
centres, Sinkhorn-Knopp) are computed over the global batch exactly as on
one device, with no extra code in the losses.

Model parallelism (for B/14 and larger) adds a "model" mesh axis and shards
the big matrices of both towers and of the projection heads Megatron-style:
the first matrix of each pair is split by output columns, the second by
input rows, so each block needs one all-reduce per pair.

    from keras_tipsv2.training.distribution import data_parallel
    data_parallel()                  # before building the model
    model = TIPSv2Pretrainer(TIPSv2Backbone(...))
    model.fit(dataset)               # batches are split over all devices

Both functions must be called before the model is built (its variables get
their layouts when created).
"""

import keras

# Variable-path regexes (LayoutMap full-matches them against `Variable.path`)
# and their layouts on a ("batch", "model") mesh. None = replicated along
# that dimension.
TOWER_LAYOUTS = {
    # Attention: qkv split by output (heads), the output projection by input.
    r".*attention/qkv/kernel": (None, "model"),
    r".*attention/qkv/bias": ("model",),
    r".*attention/proj/kernel": ("model", None),
    # MLPs of the image tower (mlp/fc*) and of the text tower (fc*).
    r".*fc1/kernel": (None, "model"),
    r".*fc1/bias": ("model",),
    r".*fc2/kernel": ("model", None),
    r".*token_embedding/embeddings": (None, "model"),
    # Projection heads: hidden layers by output, prototypes by prototype.
    r".*_head/dense_0/kernel": (None, "model"),
    r".*_head/prototypes": (None, "model"),
}


def _require_jax():
    if keras.backend.backend() != "jax":
        raise ValueError(
            "keras.distribution supports the JAX backend only; got "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=jax."
        )


def data_parallel(devices=None):
    """Sets (and returns) a `DataParallel` distribution over `devices` (default all)."""
    _require_jax()
    devices = devices or keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution


def tower_layout_map(mesh):
    """A `LayoutMap` sharding the towers' and heads' big matrices on "model"."""
    layout_map = keras.distribution.LayoutMap(mesh)
    for pattern, axes in TOWER_LAYOUTS.items():
        layout_map[pattern] = axes
    return layout_map


def model_parallel(model_devices, devices=None):
    """Sets (and returns) a `ModelParallel` distribution on a
    (len(devices) / model_devices, model_devices) ("batch", "model") mesh.

    Args:
        model_devices: devices each weight is sharded over; the rest of the
            devices split the batch. Hidden sizes, head counts x head size and
            prototype counts must be divisible by it.
        devices: devices to use (default all).
    """
    _require_jax()
    devices = devices or keras.distribution.list_devices()
    if model_devices < 1 or len(devices) % model_devices:
        raise ValueError(
            f"model_devices ({model_devices}) must divide the number of devices ({len(devices)})."
        )
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // model_devices, model_devices),
        axis_names=("batch", "model"),
        devices=devices,
    )
    distribution = keras.distribution.ModelParallel(
        layout_map=tower_layout_map(mesh), batch_dim_name="batch"
    )
    keras.distribution.set_distribution(distribution)
    return distribution
