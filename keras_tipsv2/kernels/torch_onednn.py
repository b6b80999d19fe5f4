"""oneDNN's matmul for float32 torch inference on CPU.

torch's `matmul` on CPU calls MKL's sgemm, which runs far below the CPU's
peak on AMD processors; oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`,
the op torch's own compiler emits for linear layers) ran up to twice as
fast on the towers' shapes (benchmarks/RESULTS.md). `onednn_matmuls()` is a
`TorchFunctionMode` that sends the Dense layers' matmuls there while it is
active; the layers themselves stay Keras's `Dense`.

It only takes a matmul of a float32 CPU activation by a 2-D float32 kernel
with autograd off (oneDNN's op has no gradient), and only when the op passed
a one-time probe against `torch.matmul`; everything else runs as it came.
The op is private to torch: if a torch lacks it or it misbehaves, the probe
fails and every matmul keeps `torch.matmul`.
"""

import contextlib
import functools

import torch


class _OneDNNMatmuls(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.matmul and not kwargs and len(args) == 2 and _applies(*args):
            return _onednn_matmul(*args)
        return func(*args, **kwargs)


def onednn_matmuls():
    """A context in which eligible `torch.matmul` calls run on oneDNN.

    Returns:
        A `torch.overrides.TorchFunctionMode`; where oneDNN's op is missing
        or failed its probe, a context that changes nothing.

    Example:
    ```python
    with torch.no_grad(), onednn_matmuls():
        outputs = backbone.vision_encoder(images)
    ```
    """
    if not onednn_available():
        return contextlib.nullcontext()
    return _OneDNNMatmuls()


def _applies(x, kernel):
    return (
        isinstance(x, torch.Tensor)
        and isinstance(kernel, torch.Tensor)
        and kernel.dim() == 2
        and x.dim() >= 2
        and x.dtype == kernel.dtype == torch.float32
        and x.device.type == kernel.device.type == "cpu"
        and not torch.is_grad_enabled()
    )


def _onednn_matmul(x, kernel):
    """`x @ kernel` for (..., K) x and (K, M) kernel, by oneDNN.

    oneDNN wants the (M, K) weight of a linear layer; the transposed view of
    Keras's (K, M) kernel is read as it is, without a copy.
    """
    flat = torch.reshape(x, (-1, x.shape[-1]))
    out = torch.ops.mkldnn._linear_pointwise(flat, kernel.t(), None, "none", [], "")
    return torch.reshape(out, (*x.shape[:-1], kernel.shape[-1]))


@functools.cache
def onednn_available():
    """Whether oneDNN's linear op exists in this torch and agrees with
    `torch.matmul` on a small float32 product (checked once per process)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)
        kernel = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        with torch.no_grad():
            return bool(torch.equal(_onednn_matmul(x, kernel), torch.matmul(x, kernel)))
    except (AttributeError, RuntimeError, TypeError):
        return False
