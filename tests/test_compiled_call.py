"""The public calls' compiled path: same numbers as the plain towers, and on
JAX/CPU compiled with the XLA options that made the towers faster."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_tipsv2 import TIPSv2Backbone
from keras_tipsv2.layers import compiled_call
from tests.conftest import tiny_backbone_kwargs

jax_only = pytest.mark.skipif(keras.config.backend() != "jax", reason="JAX's compiler options")
tf_only = pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="TensorFlow's jit_compile")


def test_encode_images_matches_the_plain_image_tower(rng):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = rng.random((2, 28, 42, 3)).astype("float32")
    compiled = backbone.encode_images(images)
    plain = backbone.vision_encoder(ops.convert_to_tensor(images))
    for key in ("cls_tokens", "patch_tokens"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(compiled[key]), ops.convert_to_numpy(plain[key]), atol=1e-5
        )


def test_encode_text_matches_the_plain_text_tower():
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    ids = np.array([[5, 9, 3, 0], [7, 1, 0, 0]], "int32")
    mask = (ids > 0).astype("int32")
    compiled = backbone.encode_text(ids, mask)
    plain = backbone.text_encoder(ops.convert_to_tensor(ids), ops.convert_to_tensor(mask))
    np.testing.assert_allclose(ops.convert_to_numpy(compiled), ops.convert_to_numpy(plain), atol=1e-5)


@tf_only
def test_tensorflow_compiles_the_image_calls_as_the_cpu_suits_and_text_as_a_graph(rng):
    from unittest import mock

    from keras_tipsv2.layers import attention

    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = rng.random((2, 28, 42, 3)).astype("float32")
    with mock.patch.object(
        attention, "_explicit_attention", wraps=attention._explicit_attention
    ) as explicit:
        backbone.encode_images(images)
        backbone.get_intermediate_layers(images, [0])
    backbone.encode_text(np.array([[5, 9, 0]], "int32"), np.array([[1, 1, 0]], "int32"))
    vision = backbone.vision_encoder.__dict__[compiled_call._CACHE_ATTRIBUTE]
    text = backbone.text_encoder.__dict__[compiled_call._CACHE_ATTRIBUTE]
    xla = compiled_call.xla_suits_the_image_tower()
    assert {key[0]: f._jit_compile for key, f in vision.items()} == {
        "encode_images": xla,
        "get_intermediate_layers": xla,
    }
    assert [f._jit_compile for f in text.values()] == [False]
    # Under XLA on CPU "auto" attention is the explicit one, in both calls;
    # a plain graph never takes it.
    assert (explicit.call_count > 0) == (xla and attention.explicit_attention_is_faster())


@tf_only
def test_tensorflow_image_calls_give_the_same_numbers_as_a_graph_and_under_xla(rng, monkeypatch):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    # 240 patches: long enough for the graph's per-head attention on CPU.
    images = rng.random((1, 210, 224, 3)).astype("float32")
    outputs = {}
    for xla in (False, True):
        monkeypatch.setattr(compiled_call, "xla_suits_the_image_tower", lambda xla=xla: xla)
        backbone.vision_encoder.__dict__.pop(compiled_call._CACHE_ATTRIBUTE, None)
        outputs[xla] = (
            backbone.encode_images(images),
            backbone.get_intermediate_layers(images, [0, 1])[1],
        )
    for graph, compiled in zip(outputs[False], outputs[True]):
        for key in ("cls_tokens", "patch_tokens"):
            np.testing.assert_allclose(
                ops.convert_to_numpy(graph[key]), ops.convert_to_numpy(compiled[key]), atol=1e-5
            )


@pytest.mark.parametrize(
    "cpu_only, avx512, expected",
    [(True, True, False), (True, False, True), (False, True, True), (False, False, True)],
)
def test_xla_suits_the_image_tower_except_on_avx512_cpu_hosts(monkeypatch, cpu_only, avx512, expected):
    from keras_tipsv2.layers import attention

    monkeypatch.setattr(attention, "cpu_only", lambda: cpu_only)
    monkeypatch.setattr(compiled_call, "_cpu_has_avx512", lambda: avx512)
    compiled_call.xla_suits_the_image_tower.cache_clear()
    try:
        assert compiled_call.xla_suits_the_image_tower() is expected
    finally:
        compiled_call.xla_suits_the_image_tower.cache_clear()


def test_avx512_is_read_from_numpys_cpu_features():
    assert isinstance(compiled_call._cpu_has_avx512(), bool)


@jax_only
def test_jax_compiled_inference_takes_per_head_attention_on_cpu_and_train_traces_do_not(rng):
    from unittest import mock

    import jax

    from keras_tipsv2.layers import attention

    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    # 240 patches: long enough for the per-head path.
    images = rng.random((1, 210, 224, 3)).astype("float32")
    plain = jax.jit(lambda x: backbone.vision_encoder(x))
    with mock.patch.object(
        attention, "_attention_per_head", wraps=attention._attention_per_head
    ) as per_head:
        expected = plain(images)
        assert per_head.call_count == 0
        got = backbone.encode_images(images)
    assert (per_head.call_count > 0) == attention.per_head_suits_jax_inference()
    for key in ("cls_tokens", "patch_tokens"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got[key]), ops.convert_to_numpy(expected[key]), atol=1e-5
        )


def _count_parts(monkeypatch):
    """The batch size of every part `call_in_parts` runs, as it runs it."""
    calls = []
    real = compiled_call.call_in_parts

    def counted(fn, size, *tensors):
        def part(*tensors):
            calls.append(tensors[0].shape[0])
            return fn(*tensors)

        return real(part, size, *tensors)

    monkeypatch.setattr(compiled_call, "call_in_parts", counted)
    return calls


def test_encode_images_in_parts_gives_the_whole_batchs_numbers(rng, monkeypatch):
    images = rng.random((5, 28, 42, 3)).astype("float32")
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    masks = rng.random((5, 2, 3)) > 0.5
    whole = backbone.encode_images(images, masks=masks)
    whole_layers = backbone.get_intermediate_layers(images, [0, 1])
    # Two images per call (6 patches each): 2 + 2 + 1.
    monkeypatch.setattr(compiled_call, "images_per_call", lambda patches: 12 // patches)
    calls = _count_parts(monkeypatch)
    parts = backbone.encode_images(images, masks=masks)
    parts_layers = backbone.get_intermediate_layers(images, [0, 1])
    assert calls == [2, 2, 1] * 2
    for got, expected in zip([parts, *parts_layers], [whole, *whole_layers]):
        for key in ("cls_tokens", "patch_tokens"):
            assert got[key].shape == expected[key].shape
            np.testing.assert_allclose(
                ops.convert_to_numpy(got[key]), ops.convert_to_numpy(expected[key]), atol=1e-5
            )


def test_jax_on_cpu_cuts_image_batches_and_torch_on_cpu_text_batches(monkeypatch):
    from keras_tipsv2.layers import attention

    b14_text_row = 3072 * 4  # the MLP's hidden layer, float32
    for backend, cpu_only, images, texts in [
        # JAX: 600 image tokens a call; text in one call.
        ("jax", True, (2, 1, 1), None),
        # torch: text calls whose widest activation is within 26 MB (2,115
        # B/14 tokens); images in one call.
        ("torch", True, (None, None, None), 33),
        ("jax", False, (None, None, None), None),
        ("torch", False, (None, None, None), None),
        ("tensorflow", True, (None, None, None), None),
    ]:
        monkeypatch.setattr(keras.config, "backend", lambda b=backend: b)
        monkeypatch.setattr(attention, "cpu_only", lambda c=cpu_only: c)
        compiled_call._cpu_backend.cache_clear()
        try:
            # B/14 at 224 px (256 patches), 448 px (1,024) and 518 px (1,369).
            got = tuple(compiled_call.images_per_call(p) for p in (256, 1024, 1369))
            got_texts = compiled_call.texts_per_call(64, b14_text_row)
            # Half the bytes per token, twice the tokens per call.
            half = compiled_call.texts_per_call(64, b14_text_row // 2)
        finally:
            compiled_call._cpu_backend.cache_clear()
        assert got == images and got_texts == texts, backend
        assert half == (66 if texts else None)


def test_text_row_is_the_mlp_or_the_qkv_projection_in_the_compute_dtype():
    narrow = TIPSv2Backbone(**tiny_backbone_kwargs(text_intermediate_dim=40))
    assert narrow._text_row_bytes() == 3 * 32 * 4  # qkv wider than 40
    wide = TIPSv2Backbone(**tiny_backbone_kwargs(text_intermediate_dim=200), dtype="bfloat16")
    assert wide._text_row_bytes() == 200 * 2


def test_text_batches_in_parts_give_the_whole_batch_numbers(monkeypatch):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 64, (5, 7)).astype("int32")
    mask = (np.arange(7)[None] < rng.integers(1, 8, (5, 1))).astype("int32")
    whole = ops.convert_to_numpy(backbone.encode_text(ids, mask))
    monkeypatch.setattr(compiled_call, "texts_per_call", lambda length, row_bytes: 2)
    calls = _count_parts(monkeypatch)
    parts = ops.convert_to_numpy(backbone.encode_text(ids, mask))
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(parts, whole, atol=1e-5)


def test_call_in_parts_concatenates_any_nest_and_passes_none_through():
    x = np.arange(10, dtype="float32").reshape(5, 2)
    seen = []

    def fn(a, b):
        seen.append((a.shape[0], b))
        return [{"y": a * 2}, a[:, :1]]

    out = compiled_call.call_in_parts(fn, 2, x, None)
    assert seen == [(2, None), (2, None), (1, None)]
    np.testing.assert_array_equal(ops.convert_to_numpy(out[0]["y"]), x * 2)
    np.testing.assert_array_equal(ops.convert_to_numpy(out[1]), x[:, :1])
    assert compiled_call.call_in_parts(fn, None, x, None)[1].shape == (5, 1)


def _compiled_hlo(jitted_lowering):
    return jitted_lowering.compile().as_text().lower()


@jax_only
def test_jax_cpu_options_take_dots_away_from_ynnpack():
    import jax
    import jax.numpy as jnp

    if jax.default_backend() != "cpu":
        assert compiled_call.jax_compiler_options() is None
        return
    options = compiled_call.jax_compiler_options()
    assert options == {"xla_cpu_experimental_ynn_fusion_type": ""}
    a = jnp.ones((64, 64))
    default = _compiled_hlo(jax.jit(jnp.matmul).lower(a, a))
    if "ynn_fusion" not in default:
        pytest.skip("this jaxlib does not send dots to YNNPACK by default")
    assert "ynn_fusion" not in _compiled_hlo(jax.jit(jnp.matmul, compiler_options=options).lower(a, a))


@jax_only
def test_encode_images_compiles_with_those_options(rng):
    backbone = TIPSv2Backbone(**tiny_backbone_kwargs())
    images = ops.convert_to_tensor(rng.random((1, 28, 28, 3)).astype("float32"))
    backbone.encode_images(images)
    (function,) = backbone.vision_encoder.__dict__[compiled_call._CACHE_ATTRIBUTE].values()
    hlo = _compiled_hlo(function.lower(images, None))
    assert "dot(" in hlo
    if compiled_call.jax_compiler_options():
        assert "ynn_fusion" not in hlo


@jax_only
def test_an_xla_that_refuses_the_option_gets_the_default_compilation(monkeypatch):
    monkeypatch.setattr(compiled_call, "_CPU_OPTIONS", {"xla_cpu_option_no_xla_has": ""})
    compiled_call.jax_compiler_options.cache_clear()
    try:
        assert compiled_call.jax_compiler_options() is None
    finally:
        compiled_call.jax_compiler_options.cache_clear()


# --- compiled_function: variable-free post-processing -------------------------


class _Owner:
    pass


def _compiles_here():
    return keras.config.backend() in ("jax", "tensorflow")


def test_compiled_function_equals_the_plain_function(rng):
    scores = rng.standard_normal((2, 4, 6, 5)).astype("float32")

    def fn(s):
        return ops.softmax(ops.image.resize(s, (8, 12), interpolation="bilinear"), axis=-1)

    owner = _Owner()
    got = compiled_call.compiled_function(owner, ("resize", 8, 12), fn, scores)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(fn(ops.convert_to_tensor(scores))),
        atol=1e-6,
    )
    cached = owner.__dict__.get(compiled_call._CACHE_ATTRIBUTE, {})
    assert list(cached) == ([("resize", 8, 12)] if _compiles_here() else [])


def test_compiled_function_keeps_the_most_recently_used_entries(monkeypatch):
    if not _compiles_here():
        pytest.skip("torch runs the plain function and caches nothing")
    monkeypatch.setattr(compiled_call, "FUNCTION_CACHE_SIZE", 2)
    owner = _Owner()
    x = np.ones((3,), "float32")
    for key in ("a", "b", "a", "c"):
        got = compiled_call.compiled_function(owner, key, lambda t, k=key: t * len(k), x)
        np.testing.assert_allclose(ops.convert_to_numpy(got), x)
    assert list(owner.__dict__[compiled_call._CACHE_ATTRIBUTE]) == ["a", "c"]


def test_compiled_function_runs_plain_on_symbolic_inputs():
    symbolic = keras.KerasTensor((2, 3))
    out = compiled_call.compiled_function(_Owner(), "k", lambda t: t * 2, symbolic)
    assert isinstance(out, keras.KerasTensor)


def test_inference_scope_records_no_gradients():
    variable = keras.Variable(np.ones((2,), "float32"))
    with compiled_call.inference_scope():
        out = variable * 3.0
    if keras.config.backend() == "torch":
        assert not out.requires_grad
    np.testing.assert_allclose(ops.convert_to_numpy(out), [3.0, 3.0])
