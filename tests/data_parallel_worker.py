"""Two train steps on one device, then data-parallel, of training models.

Run by tests/test_distribution.py in a fresh process (JAX with virtual CPU
devices, TensorFlow with logical CPU devices, torch under torchrun with
gloo): `python tests/data_parallel_worker.py CASE[,CASE] [TF_DEVICES]`.
Prints (on the first process) one JSON line: per case, for "single" and
"data_parallel", the logs after each step and every weight after the
second; on JAX also the layouts `model_parallel(2)` gives the towers.
"""

import contextlib
import json
import os
import sys

if len(sys.argv) > 2:  # TensorFlow: logical CPU devices before TF starts.
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * int(sys.argv[2])
    )

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone  # noqa: E402
from keras_tipsv2.training import TIPSv2Distiller  # noqa: E402
from keras_tipsv2.training import TIPSv2Pretrainer  # noqa: E402
from keras_tipsv2.training.distribution import data_parallel  # noqa: E402
from tests.conftest import tiny_backbone_kwargs  # noqa: E402

GLOBAL_BATCH = 8
HEAD = dict(head_hidden_dim=32, head_bottleneck_dim=16, num_prototypes=64)


def global_batch(seed, crops, masks):
    rng = np.random.default_rng(seed)

    def text():
        ids = rng.integers(1, 64, (GLOBAL_BATCH, 8)).astype("int32")
        mask = np.ones((GLOBAL_BATCH, 8), "int32")
        ids[:, 6:], mask[:, 6:] = 0, 0
        return {"token_ids": ids, "padding_mask": mask}

    batch = {
        "images": rng.uniform(size=(GLOBAL_BATCH, 28, 28, 3)).astype("float32"),
        "alt_text": text(),
        "caption": text(),
    }
    if crops:
        batch["local_crops"] = rng.uniform(size=(GLOBAL_BATCH, 2, 14, 14, 3)).astype("float32")
    if masks:
        batch["masks"] = rng.uniform(size=(GLOBAL_BATCH, 2, 2)) < 0.5
    return batch


def pretrainer(**options):
    return TIPSv2Pretrainer(
        TIPSv2Backbone(**tiny_backbone_kwargs()), seed=3, name="pretrainer", **HEAD, **options
    )


def distiller(**options):
    teacher = TIPSv2Backbone(**tiny_backbone_kwargs(vision_hidden_dim=48, text_hidden_dim=48))
    student = TIPSv2Backbone(**tiny_backbone_kwargs())
    return TIPSv2Distiller(teacher, student, seed=3, name="distiller", **HEAD, **options)


# Each case: a model builder and the batches' contents. Together they cover
# every batch-wide quantity: contrastive negatives, DINO centres, KoLeo,
# Sinkhorn-Knopp, gradient clipping, the frozen-prototype step, bool iBOT
# masks in the batch and random masks drawn in the step.
CASES = {
    "pretrainer": (
        lambda: pretrainer(
            centering="centering", koleo_weight=0.1, freeze_last_layer_steps=1,
            gradient_clip_norm=0.5,
        ),  # fmt: skip
        dict(crops=True, masks=True),
    ),
    "distiller": (
        lambda: distiller(
            mode="head", centering="sinkhorn", text_tower="student", mask_ratio=0.5,
            gradient_clip_norm=None,
        ),  # fmt: skip
        dict(crops=False, masks=False),
    ),
}


def two_steps(case, setup=None):
    """{"logs": [step 1, step 2], "weights": {path: values}} after fit."""
    build, contents = CASES[case]
    keras.utils.set_random_seed(0)
    with setup.scope() if setup else contextlib.nullcontext():
        model = build()
        # Plain SGD: the update is the gradient itself (Adam's would hide a
        # gradient off by a constant factor).
        model.compile(optimizer=keras.optimizers.SGD(0.01))
    import tensorflow as tf

    batches = [global_batch(seed, **contents) for seed in (1, 2)]
    dataset = tf.data.Dataset.from_tensors(batches[0]).concatenate(
        tf.data.Dataset.from_tensors(batches[1])
    )
    if setup:
        dataset = setup.local_batches(dataset)
    records = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            records.append({k: float(v) for k, v in logs.items()})

    model.fit(dataset, epochs=1, verbose=0, callbacks=[Record()])
    weights = {w.path: ops.convert_to_numpy(w).tolist() for w in model.weights}
    return {"logs": records, "weights": weights}


def model_parallel_specs():
    """{path: sharding spec} of the big tower matrices under model_parallel(2)."""
    from keras_tipsv2.training.distribution import model_parallel

    model_parallel(2)
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    return {
        w.path: [list(a) if isinstance(a, tuple) else a for a in w.value.sharding.spec]
        for w in backbone.weights
        if w.path.endswith(("qkv/kernel", "proj/kernel", "fc1/kernel"))
    }


def main():
    cases = sys.argv[1].split(",")
    results = {case: {"single": two_steps(case)} for case in cases}
    setup = data_parallel()
    results["num_replicas"] = setup.num_replicas
    for case in cases:
        results[case]["data_parallel"] = two_steps(case, setup)
    if keras.backend.backend() == "jax":
        results["model_parallel_specs"] = model_parallel_specs()
    if setup.is_chief:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
