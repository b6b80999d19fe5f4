import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class ContrastiveTemperature(keras.layers.Layer):
    """The learned contrastive temperature, stored as its logarithm.

    Checkpoints hold the temperature itself (a plain divisor of the cosine
    logits, about 0.004-0.005 for the released models); training wants it
    log-parameterised so that it stays positive and is not clamped (the
    released models sit above CLIP's 1/100 clamp in logit scale).
    """

    def __init__(self, initial_value=0.07, **kwargs):
        super().__init__(**kwargs)
        self.initial_value = float(initial_value)

    def build(self, input_shape=None):
        self.log_temperature = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(self.initial_value)),
            name="log_temperature",
        )
        self.built = True

    def call(self, inputs=None):
        return ops.exp(self.log_temperature)

    def get_config(self):
        config = super().get_config()
        config.update({"initial_value": self.initial_value})
        return config
