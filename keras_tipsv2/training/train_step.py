"""One train step per backend around one backend-agnostic loss function.

This is the only module of the library with per-backend code. A training
model (`TIPSv2Pretrainer`, `TIPSv2Distiller`) subclasses
`TIPSv2TrainingModel` and writes, with `keras.ops` and ordinary variable
reads and assignments, only these hooks:

* `compute_losses(batch, training)` -> `(total_loss, logs)`: the forward
  passes and the loss. It may assign non-trainable variables (DINO centres,
  seed generators) with values that carry no gradient.
* `process_gradients(grads)` -> grads: by default clipping to a global norm.
* `snapshot_variables()`: variables whose pre-update values
  `after_optimizer_step` needs (e.g. to undo the update of a frozen layer).
* `after_optimizer_step(snapshots)`: EMA teacher updates, step counters.

The three steps differ only in how gradients are taken and how state flows:
JAX runs every hook inside a `keras.StatelessScope` (so reads see the values
of the jitted state and assignments come back as new state), torch uses
autograd, TensorFlow a `GradientTape`.

Data parallelism (`distribution.py`): under JAX the step is one SPMD
program over the global batch. Under a `tf.distribute` strategy or a torch
process group every replica runs the step on its slice of the batch; the
losses then hold the global batch's value with the gradient of the
replica's share, and the step sums the gradients over the replicas before
`process_gradients`, so clipping sees the global batch's gradient and every
replica applies the same update.

Mixed precision: `mixed_bfloat16` needs no loss scaling and is supported;
`mixed_float16`'s `LossScaleOptimizer` is not (the steps do not scale).
"""

import keras
from keras import ops

from keras_tipsv2.training import distribution


def clip_by_global_norm(grads, clip_norm):
    """Scales all gradients by min(1, clip_norm / global_norm)."""
    squares = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads]
    global_norm = ops.sqrt(ops.sum(ops.stack(squares)))
    scale = ops.minimum(1.0, clip_norm / ops.maximum(global_norm, 1e-6))
    return [ops.cast(ops.cast(g, "float32") * scale, g.dtype) for g in grads]


class TIPSv2TrainingModel(keras.Model):
    """Base of the TIPSv2 training models: a custom `train_step` per backend.

    Args:
        log_names: names of the scalars `compute_losses` reports; each gets a
            `keras.metrics.Mean` (so `fit` shows epoch means). "loss" must be
            one of them.
        gradient_clip_norm: clip gradients to this global norm; None = off.
    """

    def __init__(self, log_names=("loss",), gradient_clip_norm=None, **kwargs):
        super().__init__(**kwargs)
        if "loss" not in log_names:
            raise ValueError(f"log_names must include 'loss'; got {log_names}.")
        self.gradient_clip_norm = gradient_clip_norm
        self.log_trackers = [keras.metrics.Mean(name=name) for name in log_names]

    # === Hooks (backend-agnostic) ===

    def compute_losses(self, batch, training=True):
        """Returns (total_loss scalar, {log name: scalar})."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_losses(batch, training)."
        )

    def process_gradients(self, grads):
        """Gradients, aligned with `self.trainable_variables`, before the update."""
        if self.gradient_clip_norm:
            grads = clip_by_global_norm(grads, self.gradient_clip_norm)
        return grads

    def snapshot_variables(self):
        return []

    def after_optimizer_step(self, snapshots):
        """Runs after every optimizer update; `snapshots` are the pre-update
        values of `snapshot_variables()`."""

    # === Plumbing ===

    @property
    def metrics(self):
        return list(self.log_trackers)

    def call(self, inputs, training=False):
        raise NotImplementedError(
            f"{type(self).__name__} is trained with fit(); use its backbone "
            "for inference."
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras's TensorFlow trainer (under a tf.distribute strategy)
        # averages the first batch across replicas to build the model
        # symbolically, which fails on bool inputs such as iBOT masks.
        # Training models are built in __init__: only the optimizer is left.
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _take_snapshots(self):
        return [ops.copy(v.value) for v in self.snapshot_variables()]

    def _batch(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, dict):
            raise ValueError(
                f"{type(self).__name__} expects batches that are dicts (see its "
                f"docstring); got {type(x).__name__}."
            )
        return x

    def _update_logs(self, logs):
        names = [t.name for t in self.log_trackers]
        unknown = set(logs) - set(names)
        if unknown:
            raise ValueError(f"compute_losses logged {sorted(unknown)}, not in log_names {names}.")
        for tracker in self.log_trackers:
            if tracker.name in logs:
                tracker.update_state(ops.cast(logs[tracker.name], "float32"))
        return {t.name: t.result() for t in self.log_trackers}

    def train_step(self, *args):
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_train_step(*args)
        if backend == "torch":
            return self._torch_train_step(*args)
        if backend == "tensorflow":
            return self._tensorflow_train_step(*args)
        raise NotImplementedError(f"No TIPSv2 train step for the {backend} backend.")

    def test_step(self, *args):
        if keras.backend.backend() == "jax":
            return self._jax_test_step(*args)
        (data,) = args
        _, logs = self.compute_losses(self._batch(data), training=False)
        return self._update_logs(logs)

    # --- JAX: stateless ---

    def _stateless(self, trainable_values, non_trainable_values, fn):
        """Runs fn() with variables mapped to the given values; returns
        (fn(), new trainable values, new non-trainable values)."""
        trainable = self.trainable_variables
        non_trainable = self.non_trainable_variables
        mapping = list(zip(trainable, trainable_values)) + list(
            zip(non_trainable, non_trainable_values)
        )
        with keras.StatelessScope(state_mapping=mapping) as scope:
            result = fn()

        def current(variables, values):
            new = [scope.get_current_value(v) for v in variables]
            return [value if n is None else n for n, value in zip(new, values)]

        return (
            result,
            current(trainable, trainable_values),
            current(non_trainable, non_trainable_values),
        )

    def _stateless_logs(self, metrics_values, logs):
        mapping = list(zip(self.metrics_variables, metrics_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._update_logs(logs)
        new = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, [value if n is None else n for n, value in zip(new, metrics_values)]

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_values, metrics_values = state
        batch = self._batch(data)

        def loss_fn(trainable, non_trainable):
            (total, logs), _, non_trainable = self._stateless(
                trainable, non_trainable, lambda: self.compute_losses(batch, training=True)
            )
            return total, (logs, non_trainable)

        (_, (logs, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, non_trainable
        )
        (grads, snapshots), _, _ = self._stateless(
            trainable,
            non_trainable,
            lambda: (self.process_gradients(grads), self._take_snapshots()),
        )
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, grads, trainable
        )
        _, trainable, non_trainable = self._stateless(
            trainable, non_trainable, lambda: self.after_optimizer_step(snapshots)
        )
        logs, metrics_values = self._stateless_logs(metrics_values, logs)
        return logs, (trainable, non_trainable, optimizer_values, metrics_values)

    def _jax_test_step(self, state, data):
        trainable, non_trainable, metrics_values = state
        (_, logs), _, _ = self._stateless(
            trainable,
            non_trainable,
            lambda: self.compute_losses(self._batch(data), training=False),
        )
        logs, metrics_values = self._stateless_logs(metrics_values, logs)
        return logs, (trainable, non_trainable, metrics_values)

    # --- torch: autograd ---

    def _torch_train_step(self, data):
        import torch

        if not getattr(self, "_replicas_agree", False):
            # Like DDP at start: every rank continues from rank 0's state.
            distribution.broadcast_variables(self.variables)
            self._replicas_agree = True
        batch = self._batch(data)
        self.zero_grad()
        total, logs = self.compute_losses(batch, training=True)
        total.backward()
        variables = self.trainable_variables
        grads = [
            torch.zeros_like(v.value) if v.value.grad is None else v.value.grad
            for v in variables
        ]
        with torch.no_grad():
            grads = distribution.sum_gradients(grads)
            grads = self.process_gradients(grads)
            snapshots = self._take_snapshots()
            self.optimizer.apply(grads, variables)
            self.after_optimizer_step(snapshots)
        return self._update_logs(logs)

    # --- TensorFlow: GradientTape ---

    def _tensorflow_train_step(self, data):
        import tensorflow as tf

        batch = self._batch(data)
        with tf.GradientTape() as tape:
            total, logs = self.compute_losses(batch, training=True)
        variables = self.trainable_variables
        grads = tape.gradient(total, variables)
        grads = [
            tf.zeros_like(v.value) if g is None else g for g, v in zip(grads, variables)
        ]
        grads = distribution.sum_gradients(grads)
        grads = self.process_gradients(grads)
        snapshots = self._take_snapshots()
        if distribution.num_replicas() > 1:
            # Keras's optimizer sums the replicas' gradients once more; these
            # are summed already, so the first replica hands them over and
            # the others zeros (an exact sum on any number of replicas).
            first = ops.equal(distribution.replica_index(), 0)
            grads = [ops.where(first, g, ops.zeros_like(g)) for g in grads]
        self.optimizer.apply(grads, variables)
        self.after_optimizer_step(snapshots)
        return self._update_logs(logs)
