"""Rematerialised image-tower blocks: the same train step, recomputed."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2.layers.vision_block import TIPSv2VisionBlock
from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.training import TIPSv2Pretrainer
from tests.conftest import tiny_backbone_kwargs
from tests.test_pretrainer import make_batch


def trained_weights(remat):
    keras.utils.set_random_seed(0)
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(vision_remat=remat))
    model = TIPSv2Pretrainer(
        backbone, head_hidden_dim=32, head_bottleneck_dim=16, num_prototypes=64,
        gradient_clip_norm=None, seed=3, name="pretrainer",
    )  # fmt: skip
    # Plain SGD: the update is the gradient itself.
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.train_on_batch(make_batch(seed=1))
    return {w.path: ops.convert_to_numpy(w) for w in model.weights}


def test_a_rematerialised_step_updates_every_weight_as_the_plain_step():
    plain, remat = trained_weights(False), trained_weights(True)
    assert set(plain) == set(remat)
    for path, value in plain.items():
        np.testing.assert_allclose(remat[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="jax.checkpoint recomputes the traced program"
)
def test_the_backward_pass_runs_each_block_again(monkeypatch):
    calls = []
    call = TIPSv2VisionBlock.call

    def counted(self, *args, **kwargs):
        calls.append(self.name)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(TIPSv2VisionBlock, "call", counted)
    trained_weights(False)
    plain = len(calls)
    calls.clear()
    trained_weights(True)
    # The clean view, the masked view and the local crops each ran the 2
    # blocks; remat runs them once more to take the gradient.
    assert (plain, len(calls)) == (6, 12)


def test_remat_with_stochastic_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="drop_path_rate"):
        TIPSv2Backbone(**tiny_backbone_kwargs(vision_remat=True, vision_drop_path_rate=0.1))


def test_remat_survives_the_config_round_trip():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs(vision_remat=True))
    again = TIPSv2Backbone.from_config(backbone.get_config())
    assert again.vision_encoder.remat is True


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="inspects a JAX program")
def test_jax_training_calls_checkpoint_each_block():
    import jax

    def checkpoints(remat, training):
        backbone = TIPSv2Backbone(**tiny_backbone_kwargs(vision_remat=remat))
        images = np.zeros((1, 28, 28, 3), "float32")
        program = jax.make_jaxpr(lambda x: backbone.vision_encoder(x, training=training))
        return str(program(images)).count("remat2[")  # jax.checkpoint's primitive

    assert (checkpoints(True, True), checkpoints(True, False), checkpoints(False, True)) == (2, 0, 0)
