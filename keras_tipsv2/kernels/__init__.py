"""Optional device-specific fast paths for inference, chosen by one policy.

The layers compute the model with `keras.ops`; the models' inference calls
(`encode_images`, `encode_text`, ...) ask `policy` which faster equivalent
to use on this backend and device. `describe()` prints the choice,
`set_enabled(False)` (or `KERAS_TIPSV2_KERNELS=off`) turns them off.
"""

from keras_tipsv2.kernels.policy import KERNELS
from keras_tipsv2.kernels.policy import active
from keras_tipsv2.kernels.policy import describe
from keras_tipsv2.kernels.policy import set_enabled
