"""A corpus of bad inputs fed to the processor, the model, the pipeline and training data loading: each one either
works correctly or raises a clear error that names the input and the problem."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_moda import MODAImageToTextPipeline


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> (path, expectation): "ok" (with a check of the decoded RGB image) or an error pattern."""
    d = tmp_path_factory.mktemp("bad-inputs")
    red = Image.new("RGB", (40, 30), (220, 20, 20))
    files = {}
    (d / "empty.jpg").write_bytes(b"")
    files["zero-byte"] = (str(d / "empty.jpg"), "empty")
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(jpeg, "JPEG")
    (d / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    files["truncated-jpeg"] = (str(d / "truncated.jpg"), "truncated|Could not read")
    (d / "notes.jpg").write_text("this is not an image")
    files["text-named-jpg"] = (str(d / "notes.jpg"), "Could not read image")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))
    files["rgba-transparent"] = (save(rgba, d / "rgba.png"), (255, 255, 255))  # transparent -> white background
    files["la"] = (save(Image.new("LA", (20, 20), (0, 0)), d / "la.png"), (255, 255, 255))
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([10, 200, 10] * 256)
    palette.info["transparency"] = 1
    files["palette-transparency"] = (save(palette, d / "palette.png", transparency=1), (10, 200, 10))
    sixteen = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    files["16-bit"] = (save(sixteen, d / "sixteen.png"), (255, 255, 255))
    files["cmyk-jpeg"] = (save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), d / "cmyk.jpg"), "red")
    files["greyscale"] = (save(Image.new("L", (20, 20), 128), d / "grey.png"), (128, 128, 128))
    files["1x1"] = (save(Image.new("RGB", (1, 1), (0, 255, 0)), d / "one.png"), (0, 255, 0))
    exif = Image.new("RGB", (40, 20), (0, 0, 200)).getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    files["exif-rotated"] = (save(Image.new("RGB", (40, 20), (0, 0, 200)), d / "exif.jpg", exif=exif), "portrait")
    frames = [Image.new("RGB", (20, 20), c) for c in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated-gif"] = (str(d / "anim.gif"), "first-frame-red")
    files["missing"] = (str(d / "does-not-exist.jpg"), "not found")
    files["failing-url"] = ("http://127.0.0.1:9/item.jpg", "Could not load image 'http://127.0.0.1:9/item.jpg'")
    files["red"] = (save(red, d / "red.png"), (220, 20, 20))
    return files


def check_decoded(name, rgb, expectation):
    assert rgb.mode == "RGB", name
    if isinstance(expectation, tuple):
        pixel = rgb.getpixel((rgb.width // 2, rgb.height // 2))
        assert max(abs(a - b) for a, b in zip(pixel, expectation)) <= 12, (name, pixel)
    elif expectation == "red":
        r, g, b = rgb.getpixel((10, 10))
        assert r > 200 and g < 60 and b < 60, (name, (r, g, b))
    elif expectation == "portrait":
        assert rgb.size == (20, 40), (name, rgb.size)  # EXIF orientation honoured
    elif expectation == "first-frame-red":
        r, g, b = rgb.getpixel((5, 5))
        assert r > 150 and g < 60, (name, (r, g, b))


def test_processor_on_every_input_works_or_names_it(corpus, tiny_model_and_processor):
    from processing_moda import _as_rgb_image

    _, processor = tiny_model_and_processor
    for name, (path, expectation) in corpus.items():
        if isinstance(expectation, str) and expectation not in ("red", "portrait", "first-frame-red"):
            with pytest.raises((ValueError, FileNotFoundError), match=expectation) as info:
                processor(images=path)
            assert path[-20:] in str(info.value), (name, str(info.value))
        else:
            check_decoded(name, _as_rgb_image(path), expectation)
            assert processor(images=path)["pixel_values"].shape == (1, 3, 32, 32)


def test_decompression_bomb_is_a_clear_error(tmp_path, tiny_model_and_processor, monkeypatch):
    _, processor = tiny_model_and_processor
    path = save(Image.new("RGB", (200, 200)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40,000 pixels is > 2x the limit: Pillow refuses
    with pytest.raises(ValueError, match="bomb.png.*decompression bomb|bomb.png.*DecompressionBomb"):
        processor(images=path)


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 4, 7), dtype=np.uint8), "shape"),
    (np.zeros((2, 3, 4, 4), dtype=np.uint8), "shape"),
    (np.zeros((0, 4, 3), dtype=np.uint8), "shape"),
    (np.zeros((4, 4, 3), dtype=np.int64), "dtype"),
    (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN"),
    (np.full((4, 4, 3), 200.0, dtype=np.float32), r"values in \[0, 1\]; got values from 200 to 200"),  # not white
    (np.full((4, 4, 3), -0.5, dtype=np.float64), r"values in \[0, 1\]"),
])
def test_bad_arrays_are_clear_errors(array, message, tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match=message):
        processor(images=array)


def test_good_arrays_work(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    for array in (np.zeros((8, 8), np.uint8), np.ones((8, 8, 3), np.float32), np.zeros((3, 8, 8), np.uint8)):
        assert processor(images=array)["pixel_values"].shape == (1, 3, 32, 32)


def test_wrong_image_types_are_clear_errors(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    with pytest.raises(TypeError, match="Expected a PIL image"):
        processor(images=12345)
    with pytest.raises(ValueError, match="empty list"):
        processor(images=[])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_nan_or_infinite_pixel_value_is_refused_by_the_model(tiny_model_and_processor, bad, dtype):
    model, _ = tiny_model_and_processor
    pixel_values = torch.zeros(2, 3, 32, 32, dtype=dtype)
    pixel_values[1, 2, 31, 30] = bad  # one value, in the second image of a batch
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.generate(pixel_values=pixel_values)
    model.generate(pixel_values=torch.zeros(2, 3, 32, 32, dtype=dtype), max_new_tokens=1)  # finite: no error


def test_empty_and_very_long_prompts(tiny_model_and_processor, red_image):
    model, processor = tiny_model_and_processor
    empty = processor(images=red_image, text="")
    assert empty["input_ids"].tolist() == [[processor.tokenizer.bos_token_id]]
    model.generate(**empty, max_new_tokens=3)
    with pytest.raises(ValueError, match="more than the 48 allowed"):
        processor(images=red_image, text="very long " * 100)
    with pytest.raises(TypeError, match="prompt must be a string"):
        processor(images=red_image, text=[3])


def test_the_processor_refuses_what_it_would_not_use(tiny_model_and_processor, red_image):
    _, processor = tiny_model_and_processor
    with pytest.raises(TypeError, match="prompt"):  # a misspelt `text` must not be dropped
        processor(images=red_image, prompt="What colour is this item?")
    with pytest.raises(TypeError, match="description"):  # nor a misspelt `descriptions`
        processor(images=red_image, description="Red Casual Shirt")
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(text=[])
    with pytest.raises(ValueError, match="cannot take videos"):
        processor(images=red_image, videos=[np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="return_tensors"):
        processor(text="Red", return_tensors="tf")


def test_the_processors_tokenizer_options_are_honoured(tiny_model_and_processor, red_image):
    _, processor = tiny_model_and_processor
    bos = processor.tokenizer.bos_token_id
    plain = processor(text="Red")["input_ids"][0].tolist()
    assert plain[0] == bos and plain.count(bos) == 1
    # A chat template's text starts with BOS itself: with add_special_tokens=False it is not doubled.
    templated = processor(text=processor.tokenizer.bos_token + "Red", add_special_tokens=False)["input_ids"][0].tolist()
    assert templated == plain
    assert "attention_mask" not in processor(text="Red", return_attention_mask=False)
    as_numpy = processor(images=[red_image] * 2, text=["Red", "What colour is this item?"], return_tensors="np")
    assert all(isinstance(as_numpy[key], np.ndarray) for key in ("pixel_values", "input_ids", "attention_mask"))
    assert as_numpy["input_ids"].shape == as_numpy["attention_mask"].shape == (2, len(
        processor(text="What colour is this item?")["input_ids"][0]))


def test_pipeline_on_bad_inputs(corpus, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    captioner = MODAImageToTextPipeline(model=model, processor=processor)
    assert isinstance(captioner(corpus["cmyk-jpeg"][0])[0]["generated_text"], str)
    for name in ("zero-byte", "text-named-jpg", "missing"):
        path = corpus[name][0]
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            captioner(path)
        assert path in str(info.value), name


def test_pipeline_batch_shapes_and_empty_batches(tiny_model_and_processor, product_images):
    model, processor = tiny_model_and_processor
    captioner = MODAImageToTextPipeline(model=model, processor=processor)
    each = [captioner(image) for image in product_images[:2]]
    assert captioner(list(product_images[:2])) == each
    assert captioner(tuple(product_images[:2])) == each  # a tuple is a batch too, one result list per image
    assert captioner(inputs=product_images[0]) == each[0]  # the argument name of transformers' own pipelines
    for empty in ([], ()):
        with pytest.raises(ValueError, match="empty list"):
            captioner(empty)
    with pytest.raises(ValueError, match="No images given"):
        captioner()


def test_training_data_loading_skips_or_fails_on_bad_rows(corpus, tiny_model_and_processor, tmp_path):
    from moda.data.catalog import BadRowError, BadRows, examples_from_rows
    from moda.data.features import FeatureCache, compute_features, pixel_values_encoder

    _, processor = tiny_model_and_processor
    rows = [
        {"image": corpus["red"][0], "Colour": "Red", "Usage": "Casual", "ProductType": "Tshirts", "Gender": "Men",
         "Category": "Apparel", "SubCategory": "Topwear", "_where": "row 1"},
        {"image": corpus["zero-byte"][0], "Colour": "Red", "Usage": "Casual", "ProductType": "Tshirts",
         "Gender": "Men", "Category": "Apparel", "SubCategory": "Topwear", "_where": "row 2"},
        {"image": corpus["red"][0], "Colour": "Red", "Usage": "Casual", "Gender": "Men", "Category": "Apparel",
         "SubCategory": "Topwear", "_where": "row 3"},  # no ProductType column
        {"image": corpus["missing"][0], "Colour": "Red", "Usage": "Casual", "ProductType": "Tshirts",
         "Gender": "Men", "Category": "Apparel", "SubCategory": "Topwear", "_where": "row 4"},
    ]
    skip = BadRows("skip")
    examples = examples_from_rows(rows, skip)
    cache = FeatureCache(tmp_path / "cache", "pixels")
    kept = compute_features(examples, pixel_values_encoder(processor), cache, skip)
    assert [example["row"]["_where"] for example in kept] == ["row 1"]
    reasons = dict(skip.rows)
    assert set(reasons) == {"row 2", "row 3", "row 4"}
    assert "empty" in reasons["row 2"] and "ProductType" in reasons["row 3"] and "cannot read" in reasons["row 4"]
    assert "skipped 3 bad row(s)" in skip.summary()
    with pytest.raises(BadRowError, match="row 3: missing value for caption template column 'ProductType'"):
        examples_from_rows(rows, BadRows("fail"))


def test_catalog_captioning_reads_every_input_or_names_it(corpus):
    from moda.io.images import load_image

    for name, (path, expectation) in corpus.items():
        if name == "failing-url":
            continue  # catalog items are files or bytes, not URLs
        if isinstance(expectation, str) and expectation not in ("red", "portrait", "first-frame-red"):
            with pytest.raises(ValueError) as info:
                load_image(path, f"item {name}")
            assert str(info.value).startswith(f"item {name}: "), (name, str(info.value))
        else:
            check_decoded(name, load_image(path, f"item {name}"), expectation)


def test_zero_new_tokens_is_refused_not_replaced_by_the_default(tiny_model_and_processor, product_images):
    model, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(**processor(images=product_images[0]), max_new_tokens=0)


def test_model_inputs_of_the_wrong_shape_or_both_image_sources_are_clear_errors(tiny_model_and_processor, red_image):
    model, processor = tiny_model_and_processor
    batch = processor(images=[red_image, red_image], text=["Red", "What colour is this item?"])
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids"):
        model.generate(**{**batch, "attention_mask": batch["attention_mask"][:, 1:]})
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, length\)"):
        model.generate(pixel_values=batch["pixel_values"][:1], input_ids=batch["input_ids"][0])
    embeds = model.get_image_features(batch["pixel_values"])
    with pytest.raises(ValueError, match="not both"):
        model.generate(pixel_values=batch["pixel_values"], image_embeds=embeds)
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], image_embeds=embeds)
