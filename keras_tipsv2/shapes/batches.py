"""ShapesWorld pretraining batches without TensorFlow: a `keras.utils.PyDataset`.

`make_pretraining_dataset` builds batches with tf.data; this source builds
the same structure with NumPy and PIL, for machines that have JAX or torch
but no TensorFlow (accelerator images often ship only one framework). It
knows only ShapesWorld, so it implements only what ShapesWorld training
uses: random-resized crops, optional local crops and multi-granularity
caption sampling. It has no flips or colour jitter on purpose: ShapesWorld
captions name left / right and colours, which those would falsify.

Batches are addressed by their global step: batch `first_step + i` is a pure
function of (world, seed, first_step + i), so a run resumed at step s reads
the batches it would have read (`fit_resumable`'s `step_batches`).
"""

import copy

import keras
import numpy as np
from PIL import Image

from keras_tipsv2.data.common import ASPECT_RATIO_RANGE
from keras_tipsv2.data.common import GLOBAL_CROP_SCALE
from keras_tipsv2.data.common import LOCAL_CROP_SCALE
from keras_tipsv2.data.common import check_caption_mode
from keras_tipsv2.data.common import check_positive
from keras_tipsv2.data.common import check_tokenizer_output
from keras_tipsv2.shapes.world import ShapesWorld

CROP_ATTEMPTS = 10


def random_crop_box(rng, height, width, scale, ratio=ASPECT_RATIO_RANGE):
    """(top, left, crop height, crop width) of a random-resized crop.

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`;
    after 10 boxes that do not fit, the whole image (as
    `tf.image.sample_distorted_bounding_box` falls back to).
    """
    area = height * width
    for _ in range(CROP_ATTEMPTS):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        crop_w = int(round(np.sqrt(target * aspect)))
        crop_h = int(round(np.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    return 0, 0, height, width


def resized_crop(image, box, size):
    """Crops `box` from a uint8 image and resizes it (PIL bilinear, which
    antialiases when shrinking) to (size, size, 3) float32 in [0, 1]."""
    top, left, crop_h, crop_w = box
    crop = Image.fromarray(image[top : top + crop_h, left : left + crop_w])
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.BILINEAR)
    return np.asarray(crop, np.float32) / 255.0


def _tokens(tokenizer, texts):
    output = tokenizer(list(texts))
    check_tokenizer_output(output)
    return {
        key: np.asarray(keras.ops.convert_to_numpy(output[key]), np.int32)
        for key in ("token_ids", "padding_mask")
    }


class ShapesWorldBatches(keras.utils.PyDataset):
    """Augmented, tokenised ShapesWorld batches for `TIPSv2Pretrainer.fit`.

    Yields the structure of `make_pretraining_dataset`: {"images": (B, S, S,
    3) float32 in [0, 1], "alt_text": {"token_ids", "padding_mask"},
    "caption": {...}} and, with local crops, "local_crops" (B, M, s, s, 3).

    Args:
        world: the `ShapesWorld` to draw from.
        tokenizer: a `TIPSv2Tokenizer` (or any callable with its contract);
            it runs once per pool sample, up front, not per batch.
        batch_size: examples per batch.
        num_batches: length of this dataset (steps).
        image_size: side of the global view (default: the world's).
        num_samples: size of the pool of samples (world indices 0 ..
            num_samples - 1), rendered and tokenised once and reshuffled on
            every pass, like the tf.data recipe's cached source.
        caption_mode: "multi" (CLS_2 gets the short or the long caption,
            uniformly per example) or "alt_text_only".
        crop_scale: area range of the global random-resized crop.
        num_local_crops, local_crop_size, local_crop_scale: DINO's local views.
        seed: seeds pass order, crops and caption choice.
        first_step: global step of this dataset's first batch.
        **kwargs: `keras.utils.PyDataset` arguments (workers,
            use_multiprocessing, max_queue_size).
    """

    def __init__(
        self,
        world,
        tokenizer,
        batch_size,
        num_batches,
        image_size=None,
        num_samples=4096,
        caption_mode="multi",
        crop_scale=GLOBAL_CROP_SCALE,
        num_local_crops=0,
        local_crop_size=32,
        local_crop_scale=LOCAL_CROP_SCALE,
        seed=0,
        first_step=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(world, ShapesWorld):
            raise ValueError(f"world must be a ShapesWorld; got {world!r}.")
        check_caption_mode(caption_mode)
        check_positive(
            batch_size=batch_size, num_batches=num_batches, num_samples=num_samples
        )
        if first_step < 0 or num_local_crops < 0:
            raise ValueError("first_step and num_local_crops must be >= 0.")
        self.world = world
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self._length = int(num_batches)
        self.image_size = int(image_size or world.image_size)
        self.num_samples = int(num_samples)
        self.caption_mode = caption_mode
        self.crop_scale = tuple(crop_scale)
        self.num_local_crops = int(num_local_crops)
        self.local_crop_size = int(local_crop_size)
        self.local_crop_scale = tuple(local_crop_scale)
        self.seed = int(seed)
        self.first_step = int(first_step)
        self._pool = None

    def __len__(self):
        return self._length

    @property
    def num_batches(self):
        return self._length

    def pool(self):
        """The rendered samples and their tokens (built on first use)."""
        if self._pool is None:
            samples = [self.world.sample(i) for i in range(self.num_samples)]
            self._pool = {
                "images": np.stack([s["image"] for s in samples]),
                "alt_text": _tokens(self.tokenizer, [s["alt_text"] for s in samples]),
                "caption_short": _tokens(
                    self.tokenizer, [s["caption_short"] for s in samples]
                ),
                "caption_long": _tokens(
                    self.tokenizer, [s["caption_long"] for s in samples]
                ),
            }
        return self._pool

    def sample_indices(self, step):
        """Pool indices of the examples of global step `step`."""
        positions = step * self.batch_size + np.arange(self.batch_size)
        passes, offsets = np.divmod(positions, self.num_samples)
        indices = np.empty(self.batch_size, np.int64)
        for p in np.unique(passes):
            order = np.random.default_rng([self.seed, 1, int(p)]).permutation(
                self.num_samples
            )
            indices[passes == p] = order[offsets[passes == p]]
        return indices

    def batch_at(self, step):
        """The batch of global step `step`."""
        pool = self.pool()
        indices = self.sample_indices(step)
        size = self.world.image_size
        images, locals_, use_long = [], [], []
        for j, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, 2, step * self.batch_size + j])
            image = pool["images"][index]
            box = random_crop_box(rng, size, size, self.crop_scale)
            images.append(resized_crop(image, box, self.image_size))
            if self.num_local_crops:
                locals_.append(
                    np.stack(
                        [
                            resized_crop(
                                image,
                                random_crop_box(rng, size, size, self.local_crop_scale),
                                self.local_crop_size,
                            )
                            for _ in range(self.num_local_crops)
                        ]
                    )
                )
            use_long.append(rng.uniform() < 0.5)
        alt_text = {k: v[indices] for k, v in pool["alt_text"].items()}
        if self.caption_mode == "alt_text_only":
            caption = {k: v.copy() for k, v in alt_text.items()}
        else:
            long = np.asarray(use_long)[:, None]
            caption = {
                k: np.where(long, pool["caption_long"][k][indices], pool["caption_short"][k][indices])
                for k in ("token_ids", "padding_mask")
            }
        batch = {"images": np.stack(images), "alt_text": alt_text, "caption": caption}
        if self.num_local_crops:
            batch["local_crops"] = np.stack(locals_)
        return batch

    def __getitem__(self, index):
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range [0, {self.num_batches}).")
        return self.batch_at(self.first_step + index)

    def steps(self, first_step, num_batches):
        """The same source over global steps first_step .. first_step +
        num_batches - 1 (shares the rendered pool)."""
        self.pool()
        view = copy.copy(self)
        view.first_step = int(first_step)
        view._length = int(num_batches)
        return view
