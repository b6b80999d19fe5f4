"""The pretraining input pipeline: raw examples -> augmented, tokenised batches.

A *raw example* is a dict with one of "image_path" / "image_bytes" /
"image" (uint8 pixels), an "alt_text" string and a "captions" string vector
(the richer caption pool, "" where missing). `manifest_examples`,
`coco_examples`, `tfrecord_examples` and `keras_tipsv2.shapes.shapes_examples`
produce them; any
`tf.data.Dataset` of that structure can be brought instead.

Examples whose image cannot be read or decoded, or whose captions are
missing, are dropped and counted in a `SkipCounter` (the first few logged
as warnings); they stop training only when nothing else is left: every
record of the source dropped, or a long run of drops in a row.
"""

import logging

import tensorflow as tf

from keras_tipsv2.data import augment
from keras_tipsv2.data.captions import caption_pair
from keras_tipsv2.data.captions import has_captions
from keras_tipsv2.data.common import check_caption_mode
from keras_tipsv2.data.common import check_positive
from keras_tipsv2.data.common import check_tokenizer_output
from keras_tipsv2.data.manifest import manifest_examples
from keras_tipsv2.data.tfrecord import tfrecord_examples

logger = logging.getLogger("keras_tipsv2.data")
IMAGE_KEYS = ("image_path", "image_bytes", "image")


class DataSourceError(RuntimeError):
    """A data source yields nothing usable: every one of its records, or a
    long run of examples in a row, was dropped."""


class SkipCounter:
    """Counts the examples a pipeline dropped, by reason, and stops one that drops all.

    Pass one to `make_pretraining_dataset(..., skip_counter=counter)`; read
    `counter.totals()` (or the properties) after iterating. The first
    `logged_skips` dropped examples are logged one by one, later ones only
    counted. Reading stops with a `DataSourceError` that names the source and
    the first reasons once every record of the source has been dropped (a
    full pass yields nothing) or `max_consecutive_skips` examples in a row
    were dropped: with `repeat=True` such a pipeline would otherwise loop
    forever without a batch. TensorFlow wraps that error when it reaches
    the consumer (e.g. in `fit`); the original stays in `counter.error`.

    Args:
        max_consecutive_skips: stop after this many dropped examples in a row.
        logged_skips: how many dropped examples are logged individually.

    Example:

    ```python
    counter = SkipCounter()
    dataset = make_pretraining_dataset("data.jsonl", tokenizer, 64, 224,
                                       skip_counter=counter)
    ...
    print(counter.totals())  # {"corrupt_images": 3, "missing_captions": 0, ...}
    ```
    """

    def __init__(self, max_consecutive_skips=1000, logged_skips=10):
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1; got {max_consecutive_skips}.")
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.logged_skips = int(logged_skips)
        self._corrupt_images = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._missing_captions = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._consecutive = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.first_reasons = []
        self.error = None

    @property
    def corrupt_images(self):
        return int(self._corrupt_images.numpy())

    @property
    def missing_captions(self):
        return int(self._missing_captions.numpy())

    @property
    def total(self):
        return self.corrupt_images + self.missing_captions

    def totals(self):
        """{"corrupt_images", "missing_captions", "total", "first_reasons"}:
        the counts so far and up to `logged_skips` "example: reason" lines."""
        return {
            "corrupt_images": self.corrupt_images,
            "missing_captions": self.missing_captions,
            "total": self.total,
            "first_reasons": list(self.first_reasons),
        }

    def recorder(self, source_name, num_records=None):
        """The map function that counts, logs and checks one source's examples.

        Args:
            source_name: how errors name the source (e.g. the manifest path).
            num_records: records in one pass of the source, if known: once
                each of them has been dropped, the source yields nothing.

        Returns:
            `element -> element` for a sequential `Dataset.map` over the
            checked examples (see `checked_example`), before they are filtered.
        """
        dropped_records = None
        if num_records:
            dropped = tf.Variable(tf.zeros([num_records], tf.bool), trainable=False)
            dropped_records = tf.Variable(0, dtype=tf.int64, trainable=False)

        def record(element):
            bad_image = tf.logical_not(element["image_ok"])
            bad_captions = element["image_ok"] & tf.logical_not(element["captions_ok"])
            skipped = bad_image | bad_captions
            logged = tf.cast(self._corrupt_images + self._missing_captions, tf.int64)
            self._corrupt_images.assign_add(tf.cast(bad_image, tf.int64))
            self._missing_captions.assign_add(tf.cast(bad_captions, tf.int64))
            consecutive = self._consecutive.assign(
                tf.where(skipped, self._consecutive + 1, tf.zeros_like(self._consecutive))
            )
            reason = tf.where(bad_image, "unreadable or corrupt image", "missing caption")
            tf.cond(
                skipped & (logged < self.logged_skips),
                lambda: tf.py_function(self._log_skip, [reason, element["name"]], []),
                tf.no_op,
            )
            stop = consecutive >= self.max_consecutive_skips
            if dropped_records is not None:
                first_time = skipped & tf.logical_not(dropped[element["record"]])
                dropped.scatter_nd_update([[element["record"]]], [skipped | dropped[element["record"]]])
                count = dropped_records.assign_add(tf.cast(first_time, tf.int64))
                stop = stop | (count >= num_records)
            tf.cond(
                stop,
                lambda: tf.py_function(self._stop, [source_name, consecutive], []),
                tf.no_op,
            )
            return element

        return record

    def _log_skip(self, reason, name):
        line = f"{name.numpy().decode()}: {reason.numpy().decode()}"
        self.first_reasons.append(line)
        logger.warning("Skipped example %s.", line)
        if len(self.first_reasons) == self.logged_skips:
            logger.warning("Further skipped examples are counted, not logged.")

    def _stop(self, source_name, consecutive):
        consecutive = int(consecutive.numpy())
        what = (
            f"{consecutive} examples in a row were dropped"
            if consecutive >= self.max_consecutive_skips
            else "every one of its records was dropped"
        )
        reasons = "; ".join(self.first_reasons[:3]) or "none logged"
        self.error = DataSourceError(
            f"Stopped reading {source_name.numpy().decode()}: {what} "
            f"({self.corrupt_images} unreadable or corrupt images, "
            f"{self.missing_captions} missing captions so far). First reasons: {reasons}."
        )
        raise self.error


def raw_examples(source):
    """Returns the raw-example dataset of `source`.

    Args:
        source: a `tf.data.Dataset` of raw examples (for ShapesWorld,
            `keras_tipsv2.shapes.shapes_examples(world)`), a ".jsonl"/".csv" manifest path or a
            TFRecord file pattern (".tfrecord" files). For COCO use
            `coco_examples(annotations_path, image_dir)`.
    """
    if isinstance(source, tf.data.Dataset):
        return _checked_raw_dataset(source)
    if isinstance(source, str):
        lowered = source.lower()
        if lowered.endswith((".jsonl", ".csv")):
            return manifest_examples(source)
        if lowered.endswith(".json"):
            raise ValueError(
                f"{source!r} looks like a COCO captions file: pass "
                "coco_examples(annotations_path, image_dir) as the source."
            )
        if "tfrecord" in lowered:
            return tfrecord_examples(source)
    raise ValueError(
        "source must be a tf.data.Dataset of raw examples, a "
        f".jsonl/.csv manifest or a TFRecord pattern; got {source!r}."
    )


def _checked_raw_dataset(dataset):
    spec = dataset.element_spec
    if not isinstance(spec, dict) or not {"alt_text", "captions"} <= set(spec):
        raise ValueError(
            "A raw-example dataset must yield dicts with 'alt_text', 'captions' "
            f"and one of {IMAGE_KEYS}; got {spec}."
        )
    if sum(k in spec for k in IMAGE_KEYS) != 1:
        raise ValueError(
            f"A raw example needs exactly one of {IMAGE_KEYS}; got {sorted(spec)}."
        )
    return dataset


def checked_example(index, example, caption_mode):
    """Loads the image and flags whether the example is usable."""
    image, image_ok = augment.try_load_image(example)
    name = example.get("image_path", tf.strings.as_string(index))
    return {
        "index": index,
        "record": example["record"],
        "name": tf.strings.join(["#", tf.strings.as_string(index), " ", name]),
        "image": image,
        "alt_text": example["alt_text"],
        "captions": example["captions"],
        "image_ok": image_ok,
        "captions_ok": has_captions(example, caption_mode),
    }


def make_pretraining_dataset(
    source,
    tokenizer,
    batch_size,
    image_size,
    num_local_crops=0,
    local_crop_size=98,
    caption_mode="multi",
    shuffle=True,
    seed=0,
    crop_scale=augment.GLOBAL_CROP_SCALE,
    local_crop_scale=augment.LOCAL_CROP_SCALE,
    horizontal_flip=True,
    colour_jitter=True,
    repeat=False,
    shuffle_buffer=1024,
    drop_remainder=True,
    skip_counter=None,
):
    """Batches for TIPSv2 pretraining.

    Args:
        source: see `raw_examples`.
        tokenizer: callable mapping a string batch to {"token_ids",
            "padding_mask"}, usable inside tf.data (e.g. `TIPSv2Tokenizer`).
        batch_size: examples per batch.
        image_size: side of the global view.
        num_local_crops: M local crops per image for the DINO loss (0: none).
        local_crop_size: side of each local crop (98 for patch 14).
        caption_mode: "multi" (CLS_2 gets a caption drawn per example from
            the caption pool) or "alt_text_only" (TIPS baseline).
        shuffle: shuffle examples with `seed`.
        seed: seeds shuffling, augmentation and caption sampling; the same
            seed gives the same batches.
        crop_scale: area range of the global random-resized crop; (1, 1)
            keeps the whole image.
        local_crop_scale: area range of the local crops.
        horizontal_flip: random left-right flips (turn off when captions
            name left and right, as ShapesWorld's long captions do).
        colour_jitter: random colour jitter (turn off when captions name
            colours that hue shifts would change).
        repeat: loop over the source forever, with fresh augmentation on
            each pass.
        shuffle_buffer: size of the shuffle buffer.
        drop_remainder: drop the last partial batch.
        skip_counter: a `SkipCounter` to count dropped examples in.

    Returns:
        Dataset of {"images": (B, H, W, 3) float32 in [0, 1],
        "alt_text": {"token_ids", "padding_mask"}, "caption": {...},
        and, with local crops, "local_crops": (B, M, s, s, 3)}.
    """
    check_caption_mode(caption_mode)
    check_positive(batch_size=batch_size, image_size=image_size)
    if num_local_crops < 0:
        raise ValueError(f"num_local_crops must be >= 0; got {num_local_crops}.")
    if num_local_crops:
        check_positive(local_crop_size=local_crop_size)
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be callable; got {tokenizer!r}.")
    counter = skip_counter or SkipCounter()
    base_seed = tf.constant([seed, 0], tf.int64)

    def views(element):
        seeds = augment.split_seed(
            tf.random.experimental.stateless_fold_in(base_seed, element["index"]), 3
        )
        alt_text, caption = caption_pair(element, seeds[1], caption_mode)
        batch = {
            "images": augment.augmented_view(
                element["image"], image_size, seeds[0], crop_scale,
                horizontal_flip, colour_jitter,
            ),
            "alt_text": alt_text,
            "caption": caption,
        }  # fmt: skip
        if num_local_crops:
            batch["local_crops"] = augment.local_crops(
                element["image"], num_local_crops, local_crop_size, seeds[2],
                local_crop_scale, horizontal_flip, colour_jitter,
            )  # fmt: skip
        return batch

    def tokenized(batch):
        for key in ("alt_text", "caption"):
            batch[key] = _tokens(tokenizer(batch[key]))
        return batch

    dataset = raw_examples(source)
    num_records = int(dataset.cardinality())
    # Each record's number in its pass, so the counter can tell when every
    # record has been dropped.
    dataset = dataset.enumerate().map(lambda r, x: dict(x, record=r))
    if repeat:
        dataset = dataset.repeat()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    source_name = source if isinstance(source, str) else "the raw-example dataset"
    record = counter.recorder(source_name, num_records if num_records > 0 else None)
    dataset = (
        dataset.enumerate()
        .map(lambda i, x: checked_example(i, x, caption_mode), **parallel)
        .map(record)  # sequential: exact counts
        .filter(lambda x: x["image_ok"] & x["captions_ok"])
        .map(views, **parallel)
        .batch(batch_size, drop_remainder=drop_remainder)
        .map(tokenized, **parallel)
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _tokens(output):
    check_tokenizer_output(output)
    return {
        "token_ids": tf.cast(output["token_ids"], tf.int32),
        "padding_mask": tf.cast(output["padding_mask"], tf.int32),
    }


def tf_data_tokenizer(proto, sequence_length):
    """A `TIPSv2Tokenizer` that several tf.data pipelines can share.

    Its SentencePiece op is created eagerly here: created lazily inside a
    first pipeline's map function, it would belong to that function's graph
    and die with it, and every later pipeline (e.g. the next epoch's) would
    fail with "Resource ... SentencepieceOp does not exist". Create it after
    the last `keras.utils.set_random_seed`, which resets TensorFlow's
    resources.

    Args:
        proto: SentencePiece model, a path or its bytes.
        sequence_length: padded length of the token ids.

    Returns:
        A `TIPSv2Tokenizer`.
    """
    from keras_tipsv2.models.tipsv2_tokenizer import TIPSv2Tokenizer

    tokenizer = TIPSv2Tokenizer(proto=proto, sequence_length=sequence_length)
    tokenizer(tf.constant(["a"]))
    return tokenizer
