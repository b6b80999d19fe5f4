from keras_tipsv2.layers.attention import TIPSv2Attention
from keras_tipsv2.layers.drop_path import DropPath
from keras_tipsv2.layers.temperature import ContrastiveTemperature
from keras_tipsv2.layers.text_block import MaskedMeanPooling, TIPSv2TextBlock
from keras_tipsv2.layers.text_embedding import (
    TIPSv2TextEmbedding,
    sinusoidal_position_signal,
)
from keras_tipsv2.layers.vision_block import (
    LayerScale,
    TIPSv2VisionBlock,
    TIPSv2VisionMLP,
)
from keras_tipsv2.layers.vision_embedding import (
    TIPSv2VisionEmbedding,
    antialiased_resize,
    centre_pad_to_multiple,
    resize_position_grid,
)
from keras_tipsv2.layers.dpt import TIPSv2DPTHead
from keras_tipsv2.layers.functional import l2_normalize
from keras_tipsv2.layers.projection_head import TIPSv2ProjectionHead
