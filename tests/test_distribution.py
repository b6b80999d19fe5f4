"""Scale-out: a train step on 4 (virtual CPU) devices equals the 1-device step.

JAX fixes its device count when it is imported, so the check runs in a
subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=4.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution is JAX-only"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import keras, numpy as np
from keras import ops
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.training import TIPSv2Pretrainer
from keras_tipsv2.training import distribution
from tests.conftest import tiny_backbone_kwargs
from tests.test_pretrainer import make_batch

assert len(keras.distribution.list_devices()) == 4
batch = make_batch(seed=1, crops=False)
# Explicit iBOT masks: in-step random masks would differ between runs.
rng = np.random.default_rng(0)
batch["masks"] = rng.uniform(size=(8, 2, 2)) < 0.5

def one_step():
    keras.utils.set_random_seed(0)
    model = TIPSv2Pretrainer(
        TIPSv2Backbone(**tiny_backbone_kwargs()),
        head_hidden_dim=32, head_bottleneck_dim=16, num_prototypes=64, seed=3,
        name="pretrainer",
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    logs = model.train_on_batch(batch, return_dict=True)
    weights = {w.path: ops.convert_to_numpy(w).tolist() for w in model.weights}
    return {k: float(v) for k, v in logs.items()}, weights

results = {"single": one_step()}
distribution.data_parallel()
results["data_parallel"] = one_step()
distribution.model_parallel(2)
backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
results["model_parallel_specs"] = {
    w.path: [list(a) if isinstance(a, tuple) else a for a in w.value.sharding.spec]
    for w in backbone.weights
    if w.path.endswith(("qkv/kernel", "proj/kernel", "fc1/kernel"))
}
json.dump(results, sys.stdout)
"""


@pytest.fixture(scope="module")
def steps():
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_four_device_data_parallel_step_gives_the_single_device_losses(steps):
    single, distributed = steps["single"][0], steps["data_parallel"][0]
    for name in ("loss", "contrastive_loss", "dino_loss", "patch_loss"):
        assert abs(distributed[name] - single[name]) < 1e-5 * max(1.0, abs(single[name])), name


def test_four_device_data_parallel_step_gives_the_single_device_weights(steps):
    import numpy as np

    single, distributed = steps["single"][1], steps["data_parallel"][1]
    # Adam's first step moves every weight by about the learning rate
    # (1e-3), far more than the tolerance: a wrong gradient shows.
    assert set(single) == set(distributed)
    for path, value in single.items():
        np.testing.assert_allclose(distributed[path], value, rtol=1e-5, atol=1e-5, err_msg=path)


def test_model_parallel_layout_shards_attention_and_mlp_on_the_model_axis(steps):
    specs = steps["model_parallel_specs"]
    assert len(specs) == 3 * 4  # qkv, proj, fc1 in 2 + 2 blocks
    for path, spec in specs.items():
        expected = ["model", None] if path.endswith("proj/kernel") else [None, "model"]
        assert spec == expected, path
