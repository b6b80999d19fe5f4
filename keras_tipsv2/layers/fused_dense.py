"""A `Dense` layer whose bias add runs inside the matmul on torch.

Why this exists (benchmarks/RESULTS.md has the numbers): Keras's `Dense`
computes `matmul(x, kernel)` and then adds the bias as a separate op. On
torch/CPU that add is one more pass over, and one more fresh allocation of,
every activation-sized tensor (48 of them per B/14 image-tower call); the
torch profile of the tower at 448 px put 0.73 s of 12.4 s in those adds,
against 0.07 s for transformers, whose `Linear` adds its bias inside one
`addmm`. Here the torch backend does the same: `torch.addmm(bias, x, kernel)`
gives the same numbers as matmul + add (bit-identical on this machine's
oneDNN/MKL), gradients included. For float32 inference on CPU (autograd
off) the same matmul-with-bias runs through oneDNN instead, about twice as
fast as `addmm` on an AMD CPU (`_onednn_applies`).

Every other case is Keras's own `Dense`, unchanged: JAX (XLA fuses the add
into its dot), TensorFlow (the same change there, `tf.nn.bias_add` after a
2-D matmul, measured no faster), layers without a bias, LoRA and quantized
layers. The variables, their names and the config are `Dense`'s, so
checkpoints and presets are the same.
"""

import functools

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
        if _onednn_applies(flat, kernel, bias):
            # oneDNN's matmul reads the (in, out) kernel as the (out, in)
            # weight it wants through a transposed view, without a copy.
            outputs = torch.ops.mkldnn._linear_pointwise(flat, kernel.t(), bias, "none", [], "")
        else:
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


def _onednn_applies(flat, kernel, bias):
    """Whether torch should run this matmul with oneDNN instead of `addmm`.

    For float32 inference on CPU: torch's `addmm` calls MKL's sgemm, which
    ran at 192-216 GFLOP/s on this project's AMD (Zen 5) CPU where oneDNN's
    matmul, the one inside torch that its compiler uses for linear layers,
    ran at 356-431 on the B/14 shapes (2,056-8,200 tokens, 768 <-> 3,072;
    benchmarks/RESULTS.md). Outputs differ from `addmm`'s by float32
    rounding (1.3e-5 at most there). oneDNN's op has no gradient, so
    whenever autograd records, `addmm` runs; so it does for other dtypes
    and devices, or a torch built without oneDNN.
    """
    import torch

    return (
        not torch.is_grad_enabled()
        and flat.dtype == kernel.dtype == bias.dtype == torch.float32
        and flat.device.type == kernel.device.type == "cpu"
        and _onednn_linear_available()
    )


@functools.cache
def _onednn_linear_available():
    """Whether this torch has oneDNN's linear op and it runs (checked once,
    on a 2 x 3 matmul against `addmm`)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        kernel = torch.ones(3, 4)
        bias = torch.arange(4, dtype=torch.float32)
        with torch.no_grad():
            out = torch.ops.mkldnn._linear_pointwise(x, kernel.t(), bias, "none", [], "")
        return bool(torch.equal(out, torch.addmm(bias, x, kernel)))
    except (AttributeError, RuntimeError):
        return False
