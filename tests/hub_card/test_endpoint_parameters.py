"""Requests, pipeline calls and generate calls never choose code to run; endpoint parameters are an allow-list.

transformers 5's `generate` loads and runs `custom_generate/generate.py` from a folder or Hub repo named by
`custom_generate=` when `trust_remote_code=True` comes with it. The endpoint handler (hub_card/handler.py, loaded from
the model folder as Inference Endpoints does) passes generation options from the request on to generate, and the
pipeline passes its `generate_kwargs` on: the handler takes only allow-listed options with types and bounds, and
MODA's generate refuses `custom_generate` and `trust_remote_code` wherever its caller comes from.
"""

import io

import pytest
from PIL import Image
from transformers import GenerationMixin, pipeline


MODA_REFUSES = r"MODA's generate refuses \['custom_generate', 'trust_remote_code'\]: .* code the caller chooses"


@pytest.fixture(scope="module")
def decoder_room(tiny_model_and_processor):
    """The most new tokens the tiny model writes after its image prefix and BOS (a fact of its config)."""
    config = tiny_model_and_processor[0].config
    return config.text_config.max_position_embeddings - config.num_image_tokens


@pytest.fixture(scope="module")
def image_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (40, 52), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def attack(tmp_path):
    """A folder holding a custom_generate (transformers 5's layout: custom_generate/generate.py with a `generate`
    function) that writes a marker file when it runs, and the marker's path."""
    marker = tmp_path / "custom_generate_ran"
    folder = tmp_path / "attacker_generate"
    (folder / "custom_generate").mkdir(parents=True)
    (folder / "custom_generate" / "generate.py").write_text(
        "from pathlib import Path\n\n\n"
        "def generate(model, **kwargs):\n"
        f"    Path({str(marker)!r}).write_text('caller-chosen code ran')\n"
        "    return None\n"
    )
    return str(folder), marker


def test_the_attack_folder_runs_where_nothing_refuses_it(tiny_model_and_processor, attack):
    """The folder is a custom_generate that transformers 5 runs: the refusals below are not vacuous. GenerationMixin's
    own generate would load it through MODA's load_custom_generate, which never loads one (a second wall); through
    GenerationMixin's loader the folder's code runs."""
    model, processor = tiny_model_and_processor
    folder, marker = attack
    inputs = processor(images=Image.new("RGB", (40, 52)), return_tensors="pt")
    with pytest.raises(OSError, match="MODA never loads a custom generate function"):
        GenerationMixin.generate(model, inputs["input_ids"], custom_generate=folder, trust_remote_code=True)
    assert not marker.exists()
    GenerationMixin.load_custom_generate(model, folder, trust_remote_code=True)(model=model)
    assert marker.read_text() == "caller-chosen code ran"


def test_model_generate_refuses_custom_generate_and_trust_remote_code(tiny_model_and_processor, attack):
    model, processor = tiny_model_and_processor
    folder, marker = attack
    inputs = processor(images=Image.new("RGB", (40, 52)), return_tensors="pt")
    with pytest.raises(ValueError, match=MODA_REFUSES):
        model.generate(**inputs, custom_generate=folder, trust_remote_code=True)
    # each alone too: trust_remote_code alone lets a decoding mode moved to the Hub (e.g. penalty_alpha's
    # contrastive search) fetch and run its repo's code
    for name, value in (("custom_generate", folder), ("trust_remote_code", True), ("trust_remote_code", False)):
        with pytest.raises(ValueError, match=rf"refuses \['{name}'\]"):
            model.generate(**inputs, **{name: value})
    assert not marker.exists()
    assert model.generate(**inputs, max_new_tokens=2, custom_generate=None, trust_remote_code=None).shape[1] <= 2


def test_the_pipeline_refuses_custom_generate_in_generate_kwargs(tiny_moda_dir, attack):
    folder, marker = attack
    captioner = pipeline("image-to-text", model=str(tiny_moda_dir), trust_remote_code=True)
    with pytest.raises(ValueError, match=MODA_REFUSES):
        captioner(Image.new("RGB", (40, 52)), generate_kwargs={"custom_generate": folder, "trust_remote_code": True})
    assert not marker.exists()


@pytest.mark.parametrize("place", ["top level", "generate_kwargs", "generation_parameters"])
def test_the_handler_refuses_custom_generate_wherever_a_request_puts_it(endpoint_handler, image_bytes, attack, place):
    folder, marker = attack
    options = {"custom_generate": folder, "trust_remote_code": True}
    parameters = options if place == "top level" else {place: options}
    named = "'custom_generate', 'trust_remote_code'" if place == "top level" else (
        f"'{place}\\[\"custom_generate\"\\]', '{place}\\[\"trust_remote_code\"\\]'")
    with pytest.raises(ValueError, match=rf"Parameter\(s\) \[{named}\] not allowed"):
        endpoint_handler({"inputs": image_bytes, "parameters": parameters})
    assert not marker.exists()


def test_the_handler_refuses_every_other_name_in_one_error_listing_the_allowed_ones(
    endpoint_handler, handler_module, image_bytes
):
    parameters = {"streamer": "x", "logits_processor": [], "max_new_tokens": 2,
                  "generate_kwargs": {"assistant_model": "facebook/opt-125m", "output_scores": True, "num_beams": 2},
                  "generation_parameters": {"prompt": "a prompt is no generation option", "stopping_criteria": []}}
    with pytest.raises(ValueError) as refused:
        endpoint_handler({"inputs": image_bytes, "parameters": parameters})
    message = str(refused.value)
    assert message.startswith(
        "Parameter(s) ['streamer', 'logits_processor', 'generate_kwargs[\"assistant_model\"]', "
        "'generate_kwargs[\"output_scores\"]', 'generation_parameters[\"prompt\"]', "
        "'generation_parameters[\"stopping_criteria\"]'] not allowed.")
    assert str(list(handler_module.GENERATION_OPTIONS)) in message and "['prompt']" in message
    for name in ("generation_config", "max_length", "penalty_alpha", "output_attentions", "timeout"):
        with pytest.raises(ValueError, match=rf"\['{name}'\] not allowed"):
            endpoint_handler({"inputs": image_bytes, "parameters": {name: 1}})


def test_the_handler_refuses_wrong_types_and_values_out_of_bounds_naming_them(endpoint_handler, image_bytes,
                                                                              decoder_room):
    nan, inf = float("nan"), float("inf")
    cases = [
        ({"num_beams": 9}, '"num_beams" must be an integer from 1 to 8; got int \'9\''),
        ({"num_beams": 0}, '"num_beams" must be an integer from 1 to 8; got int \'0\''),
        ({"num_beams": "8"}, '"num_beams" must be an integer from 1 to 8; got str \'8\''),
        ({"num_beams": True}, '"num_beams" must be an integer from 1 to 8; got bool \'True\''),
        ({"num_beams": 2.0}, '"num_beams" must be an integer from 1 to 8; got float \'2.0\''),
        ({"num_return_sequences": 9}, '"num_return_sequences" must be an integer from 1 to 8; got int \'9\''),
        ({"max_new_tokens": 0}, f'"max_new_tokens" must be an integer from 1 to {decoder_room}; got int \'0\''),
        ({"max_new_tokens": decoder_room + 1},
         f'"max_new_tokens" must be an integer from 1 to {decoder_room}; got int \'{decoder_room + 1}\''),
        ({"min_new_tokens": -1}, f'"min_new_tokens" must be an integer from 0 to {decoder_room}; got int \'-1\''),
        ({"min_new_tokens": decoder_room + 1},
         f'"min_new_tokens" must be an integer from 0 to {decoder_room}; got int \'{decoder_room + 1}\''),
        ({"temperature": 0}, '"temperature" must be a number above 0.0 and at most 2.0; got int \'0\''),
        ({"temperature": 2.5}, '"temperature" must be a number above 0.0 and at most 2.0; got float \'2.5\''),
        ({"temperature": nan}, '"temperature" must be a number above 0.0 and at most 2.0; got float \'nan\''),
        ({"temperature": inf}, '"temperature" must be a number above 0.0 and at most 2.0; got float \'inf\''),
        ({"temperature": "hot"}, '"temperature" must be a number above 0.0 and at most 2.0; got str \'hot\''),
        ({"top_k": 1001}, '"top_k" must be an integer from 0 to 1000; got int \'1001\''),
        ({"top_k": -1}, '"top_k" must be an integer from 0 to 1000; got int \'-1\''),
        ({"top_p": 0.0}, '"top_p" must be a number above 0.0 and at most 1.0; got float \'0.0\''),
        ({"top_p": 1.5}, '"top_p" must be a number above 0.0 and at most 1.0; got float \'1.5\''),
        ({"repetition_penalty": 0.5}, '"repetition_penalty" must be a number from 1.0 to 2.0; got float \'0.5\''),
        ({"repetition_penalty": 2.1}, '"repetition_penalty" must be a number from 1.0 to 2.0; got float \'2.1\''),
        ({"no_repeat_ngram_size": 11}, '"no_repeat_ngram_size" must be an integer from 0 to 10; got int \'11\''),
        ({"length_penalty": 3}, '"length_penalty" must be a number from -2.0 to 2.0; got int \'3\''),
        ({"length_penalty": -inf}, '"length_penalty" must be a number from -2.0 to 2.0; got float \'-inf\''),
        ({"do_sample": 1}, '"do_sample" must be true or false; got int \'1\''),
        ({"early_stopping": "never"}, '"early_stopping" must be true or false; got str \'never\''),
        ({"prompt": 3}, '"prompt" must be a string; got int \'3\''),
        ({"prompt": "x" * 1001}, '"prompt" has 1001 characters; at most 1000 are allowed.'),
        ({"generate_kwargs": {"top_k": 1001}}, '"top_k" must be an integer from 0 to 1000'),
        ({"generation_parameters": {"num_beams": "8"}}, '"num_beams" must be an integer from 1 to 8; got str'),
    ]
    for parameters, message in cases:
        with pytest.raises(ValueError) as refused:
            endpoint_handler({"inputs": image_bytes, "parameters": parameters})
        assert str(refused.value).startswith(message), (parameters, str(refused.value))


def test_the_handler_takes_each_option_at_its_bounds(handler_module, decoder_room):
    at_bounds = [
        {"max_new_tokens": 1, "min_new_tokens": 0, "num_beams": 1, "num_return_sequences": 1, "temperature": 1e-6,
         "top_k": 0, "top_p": 1e-6, "repetition_penalty": 1, "no_repeat_ngram_size": 0, "length_penalty": -2,
         "do_sample": False, "early_stopping": False},
        {"max_new_tokens": decoder_room, "min_new_tokens": decoder_room, "num_beams": 8, "num_return_sequences": 8,
         "temperature": 2, "top_k": 1000, "top_p": 1.0, "repetition_penalty": 2.0, "no_repeat_ngram_size": 10,
         "length_penalty": 2.0, "do_sample": True, "early_stopping": True},
    ]
    for options in at_bounds:
        assert handler_module.pipeline_arguments(options, decoder_room) == {"generate_kwargs": options}
        assert handler_module.pipeline_arguments({"generation_parameters": options, "prompt": "What colour?"},
                                                 decoder_room) == {"prompt": "What colour?", "generate_kwargs": options}
    # a null option counts as not given (clients fill unset options so)
    assert handler_module.pipeline_arguments({"temperature": None, "prompt": None}, decoder_room) == {}


def test_the_handlers_room_is_the_models(tiny_model_and_processor, endpoint_handler, decoder_room):
    """max_new_tokens' bound is where MODA's generate stops: the longest caption it writes without a prompt."""
    model, processor = tiny_model_and_processor
    assert endpoint_handler.max_new_tokens == decoder_room
    inputs = processor(images=Image.new("RGB", (40, 52)), return_tensors="pt")
    longest = model.generate(**inputs, max_new_tokens=decoder_room + 1, min_new_tokens=decoder_room + 1)
    assert longest.shape[1] == decoder_room


def test_the_handler_passes_allowed_options_on_to_generate(endpoint_handler, image_bytes, monkeypatch):
    model = endpoint_handler.captioner.model
    generate, calls = model.generate, []

    def recording_generate(**kwargs):
        calls.append({name: value for name, value in kwargs.items() if name not in ("pixel_values", "input_ids",
                                                                                     "attention_mask")})
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    two = endpoint_handler({"inputs": image_bytes, "parameters": {
        "num_beams": 2, "generate_kwargs": {"num_return_sequences": 2, "length_penalty": 0.5},
        "generation_parameters": {"no_repeat_ngram_size": 3, "early_stopping": True}}})
    assert calls[-1] == {"num_beams": 2, "num_return_sequences": 2, "length_penalty": 0.5, "no_repeat_ngram_size": 3,
                         "early_stopping": True}
    assert len(two) == 2 and all(set(output) == {"generated_text"} for output in two)
    sampled = endpoint_handler({"inputs": image_bytes, "parameters": {
        "do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.2}})
    assert calls[-1] == {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.2}
    assert len(sampled) == 1
    default = endpoint_handler({"inputs": image_bytes})[0]["generated_text"]
    short = endpoint_handler({"inputs": image_bytes, "parameters": {"max_new_tokens": 1}})[0]["generated_text"]
    assert calls[-1] == {"max_new_tokens": 1} and len(short) < len(default)
    with pytest.raises(ValueError, match=r"\['max_new_tokens'\] given twice, in parameters and generate_kwargs"):
        endpoint_handler({"inputs": image_bytes, "parameters": {"max_new_tokens": 1,
                                                                "generate_kwargs": {"max_new_tokens": 2}}})
