"""Data parallelism on every backend, and the collectives the losses use.

Data parallelism replicates every weight, splits each global batch over the
replicas and updates every replica with the gradient of the global batch's
loss, so training equals training on one device with the global batch:

* JAX: `keras.distribution.DataParallel`. The train step is one SPMD program
  over global arrays, so the batch-wide quantities below are global already
  and the collectives here are identities. Several hosts: call
  `keras.distribution.initialize()` (`jax.distributed.initialize`) first;
  Keras then feeds each process its part of every global batch.
* TensorFlow: `tf.distribute.MirroredStrategy` (one process, its GPUs or
  logical devices), or a `TPUStrategy` passed as `strategy` (same
  replica-context collectives; not run here, there is no TPU). Build and
  compile the model inside `setup.scope()`; Keras splits every global
  batch over the replicas.
* torch: `torch.distributed`, one process per device started by `torchrun`
  (gloo on CPUs, NCCL on GPUs). Every process reads the same global batches
  and keeps its own slice (`setup.local_batches`).

On TensorFlow and torch each replica sees only its slice of the batch, so
whatever spans the batch gathers across replicas here: the contrastive
losses compare every image with the texts of the whole global batch
(`all_gather`, whose gradient reaches the replica that owns each row), the
DINO centres, Sinkhorn-Knopp and KoLeo see the global batch, and means over
examples are means over the global batch (`batch_mean`). A replica's loss
has the global loss's value and the gradient of its own share of it; the
train steps sum those gradients over the replicas, which gives exactly the
single-device gradient.

Model parallelism (JAX, for B/14 and larger) adds a "model" mesh axis and
shards the big matrices of both towers and of the projection heads
Megatron-style: the first matrix of each pair is split by output columns,
the second by input rows, so each block needs one all-reduce per pair.

    from keras_tipsv2.training.distribution import data_parallel
    setup = data_parallel()          # before building the model
    with setup.scope():
        model = TIPSv2Pretrainer(TIPSv2Backbone(...))
        model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    model.fit(setup.local_batches(dataset))   # global batches

`data_parallel` and `model_parallel` must be called before the model is
built (its variables get their layouts, or are mirrored, when created).
"""

import contextlib
import os

import keras
import numpy as np
from keras import ops

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


# === Setting up ===


class DataParallelSetup:
    """What `data_parallel` set up: the replica count and how to use it.

    Attributes:
        num_replicas: devices sharing each global batch, over all processes.
        process_index, num_processes: this process among those training
            together (one process per device under torchrun, one per host
            under JAX, one in all under MirroredStrategy).
        strategy: the `tf.distribute` strategy (TensorFlow), else None.
    """

    def __init__(self, num_replicas, process_index=0, num_processes=1, strategy=None):
        self.num_replicas = num_replicas
        self.process_index = process_index
        self.num_processes = num_processes
        self.strategy = strategy

    @property
    def is_chief(self):
        """Whether this process writes the run's files (checkpoints, logs, presets)."""
        return self.process_index == 0

    def scope(self):
        """Context to build and compile the model in (TensorFlow mirrors its
        variables there); a no-op on JAX and torch."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def wait_for_all(self):
        """Returns once every process got here (e.g. after the chief
        changed files the others read)."""
        if self.num_processes == 1:
            return
        if keras.backend.backend() == "torch":
            import torch.distributed as dist

            dist.barrier()
            return
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("keras_tipsv2")

    def chief_numbers(self, numbers):
        """The chief's values of a {name: int} dict, on every process (e.g.
        a schedule each process measured for itself)."""
        if self.num_processes == 1:
            return dict(numbers)
        names = sorted(numbers)
        if keras.backend.backend() == "torch":
            import torch.distributed as dist

            values = [[numbers[name] for name in names]]
            dist.broadcast_object_list(values, src=0)
            return dict(zip(names, values[0]))
        from jax.experimental import multihost_utils

        values = multihost_utils.broadcast_one_to_all(
            np.asarray([numbers[name] for name in names], "int64")
        )
        return {name: int(value) for name, value in zip(names, values)}

    def local_batches(self, dataset):
        """This process's part of each global batch of a `tf.data.Dataset`.

        Under torchrun each process keeps the slice of its rank (global
        batch b is the concatenation of the ranks' b-th batches); JAX and
        TensorFlow split global batches inside `fit`, so they get `dataset`.
        """
        if keras.backend.backend() != "torch" or self.num_processes == 1:
            return dataset
        batch = _dataset_batch_size(dataset)
        if batch % self.num_processes:
            raise ValueError(
                f"The global batch ({batch}) must be divisible by the "
                f"{self.num_processes} torch processes."
            )
        # rebatch cuts every global batch into num_processes consecutive
        # slices; shard keeps this rank's slice of each.
        local = dataset.rebatch(batch // self.num_processes)
        return local.shard(self.num_processes, self.process_index)


def _dataset_batch_size(dataset):
    import tensorflow as tf

    leading = {
        spec.shape[0]
        for spec in tf.nest.flatten(dataset.element_spec)
        if spec.shape.rank
    }
    if len(leading) != 1 or None in leading:
        raise ValueError(
            "Data-parallel torch training needs batches of a fixed size (batch "
            f"with drop_remainder=True); got leading dimensions {sorted(map(str, leading))}."
        )
    return leading.pop()


def data_parallel(devices=None, multi_host=False, strategy=None):
    """Sets up data parallelism for the current backend.

    Args:
        devices: JAX: `keras.distribution` device names; TensorFlow: device
            names for the `MirroredStrategy`; default all accelerators (or
            all CPUs). torch: ignored, each torchrun process takes the device
            of its local rank.
        multi_host: JAX only: first join the processes of several hosts
            (`keras.distribution.initialize()`, configured by the
            KERAS_DISTRIBUTION_* environment variables or, on Cloud TPU, by
            the TPU runtime).
        strategy: TensorFlow only: a `tf.distribute` strategy driven by this
            one process to use instead of a `MirroredStrategy`, e.g. a
            `tf.distribute.TPUStrategy` (the collectives here are the
            replica-context ones both strategies implement).

    Returns:
        A `DataParallelSetup`.

    Example:

    ```python
    # One process per GPU: torchrun --nproc_per_node 8 train.py
    setup = data_parallel()
    with setup.scope():
        model = TIPSv2Pretrainer(TIPSv2Backbone(**config))
        model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    model.fit(setup.local_batches(global_batches))
    ```
    """
    backend = keras.backend.backend()
    if multi_host and backend != "jax":
        raise ValueError(
            "multi_host is for JAX; torch joins hosts through torchrun "
            "(--nnodes, --rdzv-endpoint), and TensorFlow trains from one "
            f"process (a MirroredStrategy, or a TPUStrategy). Backend: {backend!r}."
        )
    if strategy is not None and backend != "tensorflow":
        raise ValueError(
            f"strategy is a tf.distribute strategy, for TensorFlow; backend: {backend!r}."
        )
    if backend == "jax":
        return _jax_data_parallel(devices, multi_host)
    if backend == "tensorflow":
        return _tensorflow_data_parallel(devices, strategy)
    if backend == "torch":
        return _torch_data_parallel()
    raise ValueError(f"No data parallelism for the {backend!r} backend.")


def _jax_data_parallel(devices, multi_host):
    import jax

    if multi_host:
        keras.distribution.initialize()
    devices = devices or keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return DataParallelSetup(len(devices), jax.process_index(), jax.process_count())


def _tensorflow_data_parallel(devices, strategy):
    import tensorflow as tf

    if strategy is None:
        if devices is None:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")]
            devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    elif devices is not None:
        raise ValueError("Pass devices or a strategy, not both.")
    return DataParallelSetup(strategy.num_replicas_in_sync, strategy=strategy)


def _torch_data_parallel():
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ValueError(
                "torch data parallelism runs one process per device: start the "
                "script with torchrun, e.g. `torchrun --nproc_per_node 2 "
                "recipes/pretrain.py --data-parallel`."
            )
        if torch.cuda.is_available():
            # Before Keras places anything: "cuda" is then this rank's GPU.
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    size = dist.get_world_size()
    return DataParallelSetup(size, dist.get_rank(), size)


def _require_jax():
    if keras.backend.backend() != "jax":
        raise ValueError(
            "Model parallelism uses keras.distribution, which supports the JAX "
            f"backend only; got {keras.backend.backend()!r}. Set KERAS_BACKEND=jax."
        )


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


# === Collectives inside a train step ===
#
# Each takes and returns this replica's tensors. With one replica (one
# device, or JAX, whose step sees global arrays) they return their input.


def _tf_replica_context():
    """The `tf.distribute` replica context of a step with several replicas."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _torch_group_size():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def num_replicas():
    """Replicas sharing the global batch in this step (1 outside a
    `tf.distribute` replica context, without a torch process group, on JAX)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        context = _tf_replica_context()
        return 1 if context is None else context.num_replicas_in_sync
    if backend == "torch":
        return _torch_group_size()
    return 1


def replica_index():
    """This replica's position in the global batch (0 .. num_replicas - 1);
    an int, or a scalar tensor inside a `tf.distribute` step."""
    if num_replicas() == 1:
        return 0
    if keras.backend.backend() == "tensorflow":
        return _tf_replica_context().replica_id_in_sync_group
    import torch.distributed as dist

    return dist.get_rank()


def _torch_all_gather_function():
    import torch
    import torch.distributed as dist

    class AllGather(torch.autograd.Function):
        """Concatenation of every rank's rows; the gradient of a rank's rows
        is the sum of the gradients all ranks computed for them."""

        @staticmethod
        def forward(ctx, x):
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            ctx.rows = x.shape[0]
            return torch.cat(parts)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous()
            dist.all_reduce(grad)
            return grad.narrow(0, dist.get_rank() * ctx.rows, ctx.rows)

    return AllGather


def all_gather(x):
    """The rows (axis 0) of every replica, in replica order, differentiably:
    the gradient each replica computes for the gathered rows flows back to
    the replica that owns them."""
    if num_replicas() == 1:
        return x
    if keras.backend.backend() == "tensorflow":
        return _tf_dense_gradient(_tf_replica_context().all_gather(x, axis=0))
    return _torch_all_gather_function().apply(x)


def _tf_dense_gradient(x):
    """x, whose gradient reaches what precedes as a dense tensor: the
    gradient of `all_gather` all-reduces it, which a sparse gradient (e.g.
    from `ops.take` rows of the gathered tensor) cannot be."""
    import tensorflow as tf

    @tf.custom_gradient
    def identity(x):
        return tf.identity(x), lambda dy: tf.convert_to_tensor(dy)

    return identity(x)


def all_sum(x):
    """The sum over replicas of `x`, without gradient."""
    x = ops.stop_gradient(ops.convert_to_tensor(x))
    if num_replicas() == 1:
        return x
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return _tf_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, x)
    import torch.distributed as dist

    x = x.clone()
    dist.all_reduce(x)
    return x


def all_max(x):
    """The maximum over replicas of the scalar `x`, without gradient."""
    if num_replicas() == 1:
        return ops.stop_gradient(x)
    # tf.distribute reduces only by sum and mean: gather the maxima instead.
    return ops.max(ops.stop_gradient(all_gather(ops.reshape(x, (1,)))))


def sum_over_replicas(share):
    """The sum of every replica's `share`, with the gradient of this
    replica's own `share`.

    A loss built from such sums has the global batch's value on every
    replica, and summing the replicas' gradients (as the train steps do)
    gives the gradient of the global loss.
    """
    if num_replicas() == 1:
        return share
    return share + all_sum(share) - ops.stop_gradient(share)


def batch_mean(values):
    """The mean of `values` (leading axis: this replica's examples) over the
    global batch, with the gradient of this replica's share of it."""
    if num_replicas() == 1:
        return ops.mean(values)
    values = ops.convert_to_tensor(values)
    count = ops.cast(ops.size(values), values.dtype)
    return sum_over_replicas(ops.sum(values) / all_sum(count))


def global_rows(local_rows):
    """(local_rows,) int indices of this replica's rows in the gathered
    (global) batch."""
    if num_replicas() == 1:
        return ops.arange(local_rows)
    sizes = all_gather(ops.reshape(ops.cast(local_rows, "int32"), (1,)))
    before = ops.sum(ops.where(ops.arange(num_replicas()) < replica_index(), sizes, 0))
    return before + ops.arange(local_rows)


def replica_slice(global_values, count):
    """This replica's `count` rows of a tensor drawn for the whole global
    batch (e.g. in-step random masks, so that the replicas together draw
    what one device would)."""
    if num_replicas() == 1:
        return global_values
    return ops.take(global_values, global_rows(count), axis=0)


def sum_gradients(grads):
    """Every replica's gradients summed, on every replica (a step's update
    then equals the single-device update on the global batch)."""
    if num_replicas() == 1:
        return grads
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return _tf_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
    import torch
    import torch.distributed as dist

    # One collective per dtype instead of one per tensor.
    summed = list(grads)
    for dtype in {g.dtype for g in grads}:
        positions = [i for i, g in enumerate(grads) if g.dtype == dtype]
        flat = torch.cat([grads[i].reshape(-1) for i in positions])
        dist.all_reduce(flat)
        parts = flat.split([grads[i].numel() for i in positions])
        for i, part in zip(positions, parts):
            summed[i] = part.view_as(grads[i])
    return summed


def broadcast_variables(variables):
    """torch: every rank takes rank 0's values of `variables` (as DDP does
    at start), so replicas built from different seeds still agree."""
    if keras.backend.backend() != "torch" or num_replicas() == 1:
        return
    import torch.distributed as dist

    for variable in variables:
        dist.broadcast(variable.value.data, src=0)
