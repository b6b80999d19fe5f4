import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per example.

    Written here rather than taken from KerasHub's DINOv2 because that one
    never zeroes a sample and fails under `fit` on every backend (KerasHub
    0.32). The mask is `floor(keep + U[0,1))`, the
    DINOv2/timm rule, scaled by `1 / keep` so the expectation is unchanged.

    Args:
        rate: probability of dropping the branch for an example.
        seed: seed of the layer's `SeedGenerator`.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        batch = ops.shape(inputs)[0]
        noise_shape = (batch,) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(
            noise_shape, dtype=inputs.dtype, seed=self.seed_generator
        )
        return inputs / keep * ops.floor(keep + noise)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
