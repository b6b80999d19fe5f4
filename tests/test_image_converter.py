import os

import keras_hub
import numpy as np
from keras import ops
from keras_hub.src.tests.test_case import TestCase
from PIL import Image

from keras_tipsv2.models.tipsv2_backbone import TIPSv2Backbone
from keras_tipsv2.models.tipsv2_image_converter import TIPSv2ImageConverter
from tests.conftest import tiny_backbone_kwargs

# PIL resizes in uint8 and rounds; our float output may differ by < 1 level.
PIL_TOLERANCE = 1.5 / 255


def smooth_image(height=48, width=80, seed=0):
    """A natural-ish uint8 RGB image: random colours upsampled by PIL."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4, width // 4, 3)).astype("uint8")
    return np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    )


def pil_reference(image, size_wh, resample):
    resized = Image.fromarray(image).resize(size_wh, resample)
    return np.asarray(resized).astype("float32") / 255.0


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


class TIPSv2ImageConverterTest(TestCase):
    def test_square_mode_matches_pil_antialiased_bilinear(self):
        image = smooth_image()
        out = to_numpy(TIPSv2ImageConverter(image_size=(28, 28))(image))
        self.assertEqual(out.shape, (28, 28, 3))
        self.assertAllClose(
            out, pil_reference(image, (28, 28), Image.BILINEAR), atol=PIL_TOLERANCE
        )

    def test_short_side_mode_keeps_aspect_and_matches_pil_bicubic(self):
        image = smooth_image()  # 48 x 80
        converter = TIPSv2ImageConverter(resize_mode="short_side", short_side=28)
        out = to_numpy(converter(image))
        # 80 * 28 / 48 = 46.67, truncated like torchvision's Resize(int).
        self.assertEqual(out.shape, (28, 46, 3))
        self.assertAllClose(
            out, pil_reference(image, (46, 28), Image.BICUBIC), atol=PIL_TOLERANCE
        )

    def test_short_side_mode_upsamples_small_images(self):
        image = smooth_image(20, 28)
        converter = TIPSv2ImageConverter(resize_mode="short_side", short_side=42)
        out = to_numpy(converter(image))
        self.assertEqual(out.shape, (42, 58, 3))
        self.assertAllClose(
            out, pil_reference(image, (58, 42), Image.BICUBIC), atol=PIL_TOLERANCE
        )

    def test_uint8_is_scaled_to_unit_range_without_mean_or_std(self):
        image = np.zeros((28, 28, 3), "uint8")
        image[:, :14] = 255
        out = TIPSv2ImageConverter(image_size=None)(image)
        self.assertDTypeEqual(out, "float32")
        self.assertAllClose(to_numpy(out), image / 255.0)

    def test_float_input_in_unit_range_gives_the_same_result_as_uint8(self):
        image = smooth_image()
        converter = TIPSv2ImageConverter(image_size=(28, 28))
        self.assertAllClose(
            to_numpy(converter(image.astype("float32") / 255.0)),
            to_numpy(converter(image)),
            atol=1e-6,
        )

    def test_float_input_outside_unit_range_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r"must be in \[0, 1\].*255"):
            TIPSv2ImageConverter()(np.full((28, 28, 3), 255.0, "float32"))

    def test_grayscale_becomes_three_equal_channels(self):
        gray = smooth_image()[..., 0]
        converter = TIPSv2ImageConverter(image_size=(28, 28))
        for image in (gray, gray[..., None]):
            out = to_numpy(converter(image))
            self.assertEqual(out.shape, (28, 28, 3))
            self.assertAllClose(out[..., 0], out[..., 2])
            self.assertAllClose(
                out[..., 1],
                pil_reference(gray, (28, 28), Image.BILINEAR),
                atol=PIL_TOLERANCE,
            )

    def test_rgba_drops_the_alpha_channel(self):
        rgb = smooth_image()
        rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, "uint8")], -1)
        converter = TIPSv2ImageConverter(image_size=(28, 28))
        self.assertAllClose(to_numpy(converter(rgba)), to_numpy(converter(rgb)))

    def test_wrong_rank_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r"\(B, H, W, C\).*\(1, 2, 28, 28, 3\)"):
            TIPSv2ImageConverter()(np.zeros((1, 2, 28, 28, 3), "uint8"))

    def test_wrong_channel_count_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r"1 \(gray\), 3 \(RGB\) or 4"):
            TIPSv2ImageConverter()(np.zeros((3, 28, 28), "uint8"))

    def test_batches_keep_their_batch_axis(self):
        batch = np.stack([smooth_image(seed=0), smooth_image(seed=1)])
        out = to_numpy(TIPSv2ImageConverter(image_size=(28, 42))(batch))
        self.assertEqual(out.shape, (2, 28, 42, 3))
        self.assertAllClose(
            out[1],
            pil_reference(batch[1], (42, 28), Image.BILINEAR),
            atol=PIL_TOLERANCE,
        )

    def test_pil_images_and_file_paths_match_arrays(self):
        image = smooth_image()
        path = os.path.join(self.get_temp_dir(), "image.png")
        Image.fromarray(image).save(path)
        converter = TIPSv2ImageConverter(image_size=(28, 28))
        expected = to_numpy(converter(image))
        self.assertAllClose(to_numpy(converter(Image.fromarray(image))), expected)
        self.assertAllClose(to_numpy(converter(path)), expected)
        self.assertAllClose(
            to_numpy(converter([path, Image.fromarray(image)])),
            np.stack([expected, expected]),
        )

    def test_pil_rgba_and_grayscale_images_become_rgb(self):
        image = smooth_image()
        converter = TIPSv2ImageConverter(image_size=(28, 28))
        rgba = Image.fromarray(image).convert("RGBA")
        self.assertAllClose(to_numpy(converter(rgba)), to_numpy(converter(image)))
        gray = Image.fromarray(image[..., 0])  # mode "L"
        self.assertEqual(tuple(converter(gray).shape), (28, 28, 3))

    def test_list_of_different_aspect_ratios_in_short_side_mode_is_a_list(self):
        converter = TIPSv2ImageConverter(resize_mode="short_side", short_side=28)
        out = converter([smooth_image(48, 80), smooth_image(80, 48)])
        self.assertIsInstance(out, list)
        self.assertEqual(tuple(out[0].shape), (28, 46, 3))
        self.assertEqual(tuple(out[1].shape), (46, 28, 3))

    def test_corrupt_file_error_names_the_file(self):
        path = os.path.join(self.get_temp_dir(), "broken.jpg")
        with open(path, "wb") as f:
            f.write(b"\xff\xd8 this is not a jpeg")
        with self.assertRaisesRegex(ValueError, "broken.jpg"):
            TIPSv2ImageConverter()(path)

    def test_missing_file_error_names_the_file(self):
        with self.assertRaisesRegex(FileNotFoundError, "nowhere.png"):
            TIPSv2ImageConverter()(os.path.join(self.get_temp_dir(), "nowhere.png"))

    def test_direct_tf_data_and_grain_calls_agree(self):
        batch = np.stack([smooth_image(seed=0), smooth_image(seed=1)])
        self.run_preprocessing_layer_test(
            cls=TIPSv2ImageConverter,
            init_kwargs={"image_size": (28, 28)},
            input_data=batch,
        )

    def test_short_side_mode_works_in_tf_data(self):
        import tensorflow as tf

        images = [smooth_image(48, 80), smooth_image(80, 48, seed=1)]
        converter = TIPSv2ImageConverter(resize_mode="short_side", short_side=28)
        ds = tf.data.Dataset.from_generator(
            lambda: iter(images),
            output_signature=tf.TensorSpec((None, None, 3), tf.uint8),
        ).map(converter)
        for image, out in zip(images, ds):
            # tf.data resizes with TensorFlow, eager calls with the backend.
            self.assertAllClose(out, to_numpy(converter(image)), atol=1e-5)

    def test_preset_round_trip_keeps_the_resize_mode(self):
        preset = os.path.join(self.get_temp_dir(), "preset")
        TIPSv2Backbone(**tiny_backbone_kwargs()).save_to_preset(preset)
        converter = TIPSv2ImageConverter(resize_mode="short_side", short_side=28)
        converter.save_to_preset(preset)
        restored = keras_hub.layers.ImageConverter.from_preset(preset)
        self.assertIsInstance(restored, TIPSv2ImageConverter)
        self.assertEqual(restored.resize_mode, "short_side")
        self.assertEqual(restored.interpolation, "bicubic")
        image = smooth_image()
        self.assertAllClose(to_numpy(restored(image)), to_numpy(converter(image)))
