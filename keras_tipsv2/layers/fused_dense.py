"""A `Dense` layer whose bias add runs inside the matmul on torch.

Why this exists (benchmarks/RESULTS.md has the numbers): Keras's `Dense`
computes `matmul(x, kernel)` and then adds the bias as a separate op. On
torch/CPU that add is one more pass over, and one more fresh allocation of,
every activation-sized tensor (48 of them per B/14 image-tower call); the
torch profile of the tower at 448 px put 0.73 s of 12.4 s in those adds,
against 0.07 s for transformers, whose `Linear` adds its bias inside one
`addmm`. Here the torch backend does the same: `torch.addmm(bias, x, kernel)`
gives the same numbers as matmul + add (bit-identical on this machine's
oneDNN/MKL), gradients included.

Every other case is Keras's own `Dense`, unchanged: JAX (XLA fuses the add
into its dot), TensorFlow (the same change there, `tf.nn.bias_add` after a
2-D matmul, measured no faster), layers without a bias, LoRA and quantized
layers. The variables, their names and the config are `Dense`'s, so
checkpoints and presets are the same.
"""

import keras
from keras import ops

from keras_tipsv2.layers.functional import overwritable


@keras.saving.register_keras_serializable(package="keras_tipsv2")
class FusedBiasDense(keras.layers.Dense):
    """`keras.layers.Dense`, with the bias added by the matmul on torch."""

    def call(self, inputs, training=None):
        if not self._fuses_bias():
            return super().call(inputs, training=training)
        import torch

        kernel = ops.convert_to_tensor(self.kernel)
        bias = ops.convert_to_tensor(self.bias)
        flat = torch.reshape(inputs, (-1, inputs.shape[-1]))
        outputs = torch.addmm(bias, flat, kernel)
        outputs = torch.reshape(outputs, (*inputs.shape[:-1], kernel.shape[-1]))
        if self.activation is keras.activations.relu and overwritable(outputs):
            # The matmul's output is this call's own; ReLU it where it is.
            return torch.relu_(outputs)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _fuses_bias(self):
        return (
            keras.config.backend() == "torch"
            and self.use_bias
            and not self.lora_enabled
            and self.quantization_mode is None
        )
