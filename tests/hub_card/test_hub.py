"""Model card, endpoint handler, and a push / load round trip through a local Hub (tests/hub_card/hub_server.py).

The test process runs with HF_HUB_OFFLINE=1 (conftest) and huggingface_hub reads that constant at import, so every
Hub call runs in a subprocess whose environment points HF_ENDPOINT at the local Hub with HF_HUB_OFFLINE=0: one
process pushes (transformers' push_to_hub, then `moda push` twice), a second one, started afterwards in another
folder with an empty cache and the repo not importable, loads by repo id and pinned revisions.
"""

import ast
import base64
import copy
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

import moda
from hub_card import prepare_model_folder, write_model_card
from hub_card.push import main as push_main
from moda.model.loading import load_captioner
from tests.conftest import HIDE_REPO, REPO_ROOT
from tests.model_files.model_tester import randomize_weights
from tests.hub_card.hub_server import LocalHub

PUSH_SCRIPT = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])
from transformers import AutoModel, AutoProcessor
from moda.cli import main as moda_main

first_dir, second_dir = sys.argv[2], sys.argv[3]
token = os.environ.pop("HF_TOKEN")  # huggingface_hub reads the token per call: first a push without one
assert moda_main(["push", first_dir, "local-user/moda"]) == 1
os.environ["HF_TOKEN"] = token
model = AutoModel.from_pretrained(first_dir, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(first_dir, trust_remote_code=True)
result = {"model_commit": model.push_to_hub("local-user/moda-transformers").oid,
          "processor_commit": processor.push_to_hub("local-user/moda-transformers").oid}
assert moda_main(["push", first_dir, "local-user/moda"]) == 0
print("FIRST_PUSH_DONE")
assert moda_main(["push", second_dir, "local-user/moda", "--commit_message", "New weights"]) == 0
assert moda_main(["push", first_dir, "local-user/moda", "--branch", "exp", "--commit_message", "Old on a branch"]) == 0
print("RESULT" + json.dumps(result))
'''

LOAD_SCRIPT = HIDE_REPO + r'''
import json, sys
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline


targets, image_paths = json.loads(sys.argv[1]), sys.argv[2:]
images = [Image.open(path) for path in image_paths]
result = {}
for repo_id, revision in targets:
    model = AutoModel.from_pretrained(repo_id, trust_remote_code=True, revision=revision)
    processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True, revision=revision)
    captioner = pipeline("image-to-text", model=repo_id, trust_remote_code=True, revision=revision)
    result[f"{repo_id}@{revision}"] = {
        "generate": processor.batch_decode(model.generate(**processor(images=images))),
        "pipeline": [output[0]["generated_text"] for output in captioner(images)],
    }
print("RESULT" + json.dumps(result))
'''

# Runs the card's Python snippets as a user pasting them into Python's prompt would (each expression's value shown),
# in a folder holding shirt.jpg, with only the repo's remote code importable.
SNIPPETS_SCRIPT = HIDE_REPO + r'''
import ast, contextlib, io, json, sys

outputs = []
for snippet in json.loads(sys.argv[1]):
    namespace, output = {"__name__": "__main__"}, io.StringIO()
    with contextlib.redirect_stdout(output):
        for statement in ast.parse(snippet).body:
            exec(compile(ast.Interactive([statement]), "<card snippet>", "single"), namespace)
    outputs.append(output.getvalue())
print("RESULT" + json.dumps(outputs))
'''

TRAINING_INFO = {
    "vision_model": "patrickjohncyh/fashion-clip",
    "text_model": "facebook/opt-125m",
    "dataset": "ashraq/fashion-product-images-small",
    "num_train_items": 18016,
    "hyperparameters": {"learning_rate": 0.001, "num_train_epochs": 3, "per_device_train_batch_size": 32},
    "train_runtime_s": 3725.0,
    "hardware": "1x NVIDIA H100",
}
EVAL_REPORT = {
    "metrics": {"bleu": 0.3125, "cider": 1.5, "attribute_accuracy": {"Colour": 0.81, "Gender": 0.93}},
    "dataset": "ashraq/fashion-product-images-small",
    "split": "test",
    "num_items": 1984,
}


def copy_model(source, target):
    shutil.copytree(source, target)
    return target


def local_captions(model_dir, images):
    captioner = load_captioner(str(model_dir))
    return [output[0]["generated_text"] for output in captioner(images)]


def run_script(script, args, env, cwd):
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):]), proc.stdout + proc.stderr


# --- the card ----------------------------------------------------------------------------------------------------

def test_card_has_hub_metadata_and_sections(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    path = write_model_card(folder, TRAINING_INFO, EVAL_REPORT, repo_id="someone/moda-small")
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-to-text"
    assert {"fashion", "e-commerce", "vision-language", "image-captioning"} <= set(data["tags"])
    assert data["base_model"] == ["patrickjohncyh/fashion-clip", "facebook/opt-125m"]
    assert data["datasets"] == ["ashraq/fashion-product-images-small"]
    # the decoder started from OPT-125m: its weights' licence carries over, named as the Hub asks for `other`
    assert data["license"] == "other" and data["license_name"] == "opt-175b-license"
    assert data["license_link"].startswith("https://github.com/facebookresearch/metaseq/")
    assert data["language"] == "en"
    # the widget shows fashion photos the card's folder holds, by their address in the repository
    assert [entry["src"] for entry in data["widget"]] == [
        f"https://huggingface.co/someone/moda-small/resolve/main/examples/{name}"
        for name in ("shirt.jpg", "sports-shoes.jpg", "dress.jpg")]
    assert data["widget"][0]["example_title"] == "Blue Shirts for Men"
    for entry in data["widget"]:
        with Image.open(folder / "examples" / entry["src"].rsplit("/", 1)[1]) as image:
            assert image.format == "JPEG" and image.size == (224, 224)
    metrics = {m["name"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"bleu": 0.3125, "cider": 1.5, "attribute_accuracy/Colour": 0.81, "attribute_accuracy/Gender": 0.93}
    body = card.text
    for section in ("## Architecture", "## How to try it", "## How to use", "## Training", "## Evaluation",
                    "## Limitations and bias", "## Licence", "## Citation"):
        assert section in body
    assert "serverless Inference API does not run custom code" in body and "handler.py" in body
    assert "OPT-175B licence agreement" in body and "non-commercial research use only" in body
    for key in ("@software{moda,", "@article{zhang2022opt,", "@inproceedings{radford2021clip,",
                "@article{chia2022fashionclip,", f'version = "{moda.__version__}"'):
        assert key in body, key
    assert "| bleu | 0.3125 |" in body and "| attribute_accuracy/Gender | 0.9300 |" in body
    assert "| learning_rate | 0.001 |" in body
    assert "1 h 2 min" in body and "1x NVIDIA H100" in body and "18,016" in body
    for snippet in ("AutoModel.from_pretrained(\"someone/moda-small\"", "AutoProcessor.from_pretrained(",
                    'pipeline("image-to-text"', 'pipeline("image-text-to-text"', "revision=",
                    "return_full_text=False"):
        assert snippet in body


def test_card_reads_what_train_hf_leaves(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    summary = {"dataset": None, "eval_split": "validation", "num_eval_items": 30, "exact_match": 0.5,
               "attribute_accuracy": {"Colour": 0.75}, "train_runtime_s": 42.0,
               "model_args": {"model_size": "tiny", "vision_model": "patrickjohncyh/fashion-clip",
                              "text_model": "facebook/opt-125m", "lr_gamma": 0.5}}
    (folder / "training_summary.json").write_text(json.dumps(summary))
    (folder / "training_args.json").write_text(json.dumps({"learning_rate": 0.001, "seed": 42, "fp16": False}))
    card = ModelCard.load(write_model_card(folder, training_info={"hardware": "CPU (2 threads)"}))
    # A from-scratch model has no base model, whatever the argument defaults named.
    assert "base_model" not in card.data.to_dict()
    assert "trained from scratch (the 'tiny' size)" in card.text
    assert "| exact_match | 0.5000 |" in card.text and "| attribute_accuracy/Colour | 0.7500 |" in card.text
    assert "| learning_rate | 0.001 |" in card.text and "| lr_gamma | 0.5 |" in card.text
    assert "42 s" in card.text and "Hardware: CPU (2 threads)." in card.text  # given facts join the files'


@pytest.mark.parametrize("use_lora", [False, True])
def test_card_lists_lora_settings_only_for_a_lora_run(tiny_moda_dir, tmp_path, use_lora):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    model_args = {"use_lora": use_lora, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lr_gamma": 0.5}
    (folder / "training_summary.json").write_text(json.dumps({"dataset": "data", "model_args": model_args}))
    card = ModelCard.load(write_model_card(folder))
    assert f"| use_lora | {use_lora} |" in card.text and "| lr_gamma | 0.5 |" in card.text
    for row in ("| lora_r | 16 |", "| lora_alpha | 32 |", "| lora_dropout | 0.05 |"):
        assert (row in card.text) is use_lora, row


def test_card_lists_the_optimizer_and_schedule_the_run_used(tiny_moda_dir, tmp_path):
    """train_hf.py trains with the Trainer's --optim and its --lr_scheduler_type (MODA's StepLR by default)."""
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    (folder / "training_summary.json").write_text(json.dumps({"dataset": "data", "model_args": {}}))
    (folder / "training_args.json").write_text(json.dumps({"optim": "sgd", "lr_scheduler_type": "step_lr",
                                                           "lr_gamma": 0.5, "adam_beta2": 0.95, "learning_rate": 0.001}))
    card = ModelCard.load(write_model_card(folder))
    assert "| adam_beta2 | 0.95 |" in card.text and "| learning_rate | 0.001 |" in card.text
    assert "| optim | sgd |" in card.text and "| lr_scheduler_type | step_lr |" in card.text
    assert "| lr_gamma | 0.5 |" in card.text and "AdamW" not in card.text


def test_weights_trained_from_scratch_come_under_the_codes_licence(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    card = ModelCard.load(write_model_card(folder, training_info={"model_size": "tiny"}))
    assert card.data.to_dict()["license"] == "apache-2.0" and "license_name" not in card.data.to_dict()
    assert "trained from scratch, from no pretrained weights, and come under Apache-2.0" in card.text
    given = {"license": "other", "license_name": "acme-weights", "license_link": "https://example.com/licence"}
    data = ModelCard.load(write_model_card(folder, training_info=given)).data.to_dict()
    assert {key: data[key] for key in given} == given
    with pytest.raises(ValueError, match="license 'other' needs license_name and license_link"):
        write_model_card(folder, training_info={"license": "other"})


def test_card_reads_eval_report_json_in_folder(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    (folder / "eval").mkdir()
    (folder / "eval" / "report.json").write_text(json.dumps({"rouge_l": 0.6, "meteor": 0.4}))
    card = ModelCard.load(write_model_card(folder))
    assert "| rouge_l | 0.6000 |" in card.text
    assert card.data.to_dict()["metrics"] == ["meteor", "rouge_l"]


@pytest.fixture
def recorded_upload(monkeypatch):
    """hub_card.push's HfApi replaced by one that records the upload: {"files": the folder's top-level names,
    "pinned": the file of the second commit, if any}."""
    import hub_card.push

    uploaded = {}

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            pass

        def upload_folder(self, folder_path, **kwargs):
            uploaded.update(files=sorted(path.name for path in Path(folder_path).iterdir()))
            return type("Commit", (), {"oid": "0" * 40})()

        def upload_file(self, path_in_repo, **kwargs):  # the card, pinned to the commit above
            uploaded.update(pinned=path_in_repo)

    monkeypatch.setattr(hub_card.push, "HfApi", RecordingApi)
    return uploaded


def test_the_handler_always_gets_the_image_io_module_it_imports(tiny_moda_dir, tmp_path, recorded_upload):
    """handler.py imports image_io_moda.py from its folder: a folder saved by a MODA without it gets it too."""
    from hub_card.push import push_model_folder

    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    (folder / "image_io_moda.py").unlink()
    prepare_model_folder(folder)
    assert (folder / "image_io_moda.py").read_bytes() == (REPO_ROOT / "image_io_moda.py").read_bytes()

    # A folder saved before image_io_moda.py existed: its model code does not import it (an absolute import is not
    # one transformers copies), but the handler.py it keeps (perhaps edited) does.
    (folder / "image_io_moda.py").unlink()
    for name in ("modeling_moda.py", "processing_moda.py"):
        code = (folder / name).read_text()
        (folder / name).write_text(code.replace("from .image_io_moda import", "from image_io_moda import"))
    push_model_folder(folder, "me/model")
    assert "image_io_moda.py" in recorded_upload["files"] and "handler.py" in recorded_upload["files"]


def test_a_kept_card_gets_its_widget_photos_and_the_pushed_hash(tiny_moda_dir, tmp_path, recorded_upload):
    from hub_card.push import push_model_folder

    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    prepare_model_folder(folder)
    shutil.rmtree(folder / "examples")  # a folder whose card names them, but lacks them
    push_model_folder(folder, "me/model")
    assert "examples" in recorded_upload["files"] and recorded_upload["pinned"] == "README.md"
    assert sorted(path.name for path in (folder / "examples").iterdir()) == ["dress.jpg", "shirt.jpg",
                                                                            "sports-shoes.jpg"]
    # a card without the placeholder revision (edited by hand) needs no second commit
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# My MODA\n")
    recorded_upload.clear()
    push_model_folder(folder, "me/model")
    assert "files" in recorded_upload and "pinned" not in recorded_upload


def test_prepare_model_folder_is_idempotent(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    prepare_model_folder(folder, TRAINING_INFO, EVAL_REPORT)
    first = {name: (folder / name).read_bytes() for name in ("README.md", "handler.py")}
    prepare_model_folder(folder, TRAINING_INFO, EVAL_REPORT)
    assert first == {name: (folder / name).read_bytes() for name in ("README.md", "handler.py")}


def test_card_bad_inputs_are_named(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    with pytest.raises(ValueError, match="unknown keys \\['epochs'\\]"):
        write_model_card(folder, {"epochs": 3})
    with pytest.raises(ValueError, match="'bleu' must be a finite number"):
        write_model_card(folder, eval_report={"metrics": {"bleu": "high"}})
    with pytest.raises(ValueError, match="'cider' must be a finite number"):
        write_model_card(folder, eval_report={"cider": float("nan")})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        write_model_card(tmp_path / "other")


def moda_eval_report(**changes):
    """A report shaped as moda/evaluate/report.py build_report writes it
    (a real one: tests/evaluate/test_evaluation.py)."""
    report = {
        "model": "/tmp/review/moda-demo", "data": "/tmp/review/catalog.csv", "split": "train",
        "split_note": "'/tmp/review/catalog.csv' has no 'test' split, so its only split 'train' was scored",
        "split_rows": 40, "limit": None, "num_items": 39,
        "skipped_items": [{"where": "catalog.csv row 7", "reason": "not a readable image"}],
        "reference_captions": "{Colour} {ProductType}",
        "scores": {"Color Accuracy": 7.5, "Style Recognition": None, "Category Accuracy": 6.0,
                   "Gender Accuracy": 9.0, "Factual Consistency": 8.25, "Overall": 7.6875},
        "score_counts": {"Color Accuracy": 39}, "hit_rates": {"colour": 0.75, "gender": 0.9},
        "majority_baseline": {"colour": {"value": "Black", "rate": 0.3}},
        "text_metrics": {"BLEU": 41.5, "ROUGE-L": 0.62, "CIDEr": None}, "text_metrics_not_computed": None,
        "judge": {"model": "some/judge", "num_items": 20, "num_parsed": 18, "mean_scores": {"Overall": 6.5}},
        "items": [{"where": "catalog.csv row 2", "description": "Black Shoes", "scores": {}}],
    }
    return {**report, **changes}


def test_card_reads_moda_eval_scores_and_descriptions(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    card = ModelCard.load(write_model_card(folder, eval_report=moda_eval_report()))
    metrics = {m["name"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"Color Accuracy": 7.5, "Category Accuracy": 6.0, "Gender Accuracy": 9.0,
                       "Factual Consistency": 8.25, "Overall": 7.6875, "colour hit rate": 0.75,
                       "gender hit rate": 0.9, "BLEU": 41.5, "ROUGE-L": 0.62, "LLM judge Overall": 6.5}
    # Scores moda eval could not compute are shown, as n/a, not left out; the model-index takes numbers only.
    assert "| Style Recognition | n/a |" in card.text and "| CIDEr | n/a |" in card.text
    assert "| colour hit rate | 0.7500 |" in card.text and "| LLM judge Overall | 6.5000 |" in card.text
    assert "the train split of the fashion catalog `catalog.csv` (39 of its 40 items)" in card.text
    assert "`moda eval` of `moda-demo`" in card.text and "only split 'train' was scored" in card.text
    assert "1 item(s) were skipped" in card.text and "colour 0.30 ('Black')" in card.text


def test_card_says_how_much_of_the_split_was_scored(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    report = moda_eval_report(split="test", split_note=None, split_rows=281, limit=40, num_items=40, skipped_items=[])
    assert "the test split of the fashion catalog `catalog.csv` (40 of its 281 items)" in \
        ModelCard.load(write_model_card(folder, eval_report=report)).text
    whole = moda_eval_report(split_rows=40, num_items=40, skipped_items=[])
    assert "`catalog.csv` (40 items)" in ModelCard.load(write_model_card(folder, eval_report=whole)).text


def test_card_does_not_say_a_synthetic_catalog_is_myntra(tiny_moda_dir, tmp_path):
    # train_hf.py's offline demo trains on moda/data/synthetic.py's drawings, not on Myntra's photos.
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    card = ModelCard.load(write_model_card(folder, training_info={"dataset": ".cache/moda-synthetic"}))
    assert "The training catalog comes from one Indian e-commerce site" not in card.text
    assert "follow the training catalog's labels" in card.text


def test_card_refuses_eval_reports_without_usable_scores(tiny_moda_dir, tmp_path):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    path = tmp_path / "report.json"
    path.write_text(json.dumps(moda_eval_report(scores={"Overall": float("nan")})))
    with pytest.raises(ValueError, match=r"report.json: Evaluation metric 'Overall' must be a finite number"):
        write_model_card(folder, eval_report=path)
    with pytest.raises(ValueError, match=r"'text_metrics' must be a dict of scores; got \[0.5\]"):
        write_model_card(folder, eval_report=moda_eval_report(text_metrics=[0.5]))
    no_scores = moda_eval_report(scores={"Overall": None}, hit_rates={}, text_metrics=None, judge=None)
    with pytest.raises(ValueError, match=r"the eval_report dict has no evaluation metrics .*`moda eval` writes"):
        write_model_card(folder, eval_report=no_scores)
    with pytest.raises(ValueError, match=r"has no evaluation metrics \(keys: \['dataset', 'split'\]\)"):
        write_model_card(folder, eval_report={"dataset": "x/y", "split": "test"})


# --- the endpoint handler ----------------------------------------------------------------------------------------

def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_handler_imports_only_what_endpoints_allow(handler_folder):
    tree = ast.parse((handler_folder / "handler.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # image_io_moda: the URL and decoding policies, which prepare_model_folder copies next to the handler;
    # fast_generation_moda: the precision policy, beside it in every saved folder (modeling_moda.py imports it)
    allowed = {"torch", "transformers", "PIL", "os", "sys", "image_io_moda", "fast_generation_moda"}
    assert imported <= allowed, imported
    assert (handler_folder / "image_io_moda.py").read_bytes() == (REPO_ROOT / "image_io_moda.py").read_bytes()
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "open", "compile", "__import__"}


def test_handler_bytes_and_base64_give_local_captions(endpoint_handler, handler_folder, product_images):
    expected = local_captions(handler_folder, product_images[:2])
    raw = png_bytes(product_images[0])
    encoded = base64.b64encode(raw).decode()
    assert endpoint_handler({"inputs": raw}) == [{"generated_text": expected[0]}]
    assert endpoint_handler({"inputs": encoded}) == [{"generated_text": expected[0]}]
    assert endpoint_handler({"inputs": "data:image/png;base64," + encoded}) == [{"generated_text": expected[0]}]
    assert endpoint_handler({"inputs": product_images[1]}) == [{"generated_text": expected[1]}]
    batch = endpoint_handler({"inputs": [raw, png_bytes(product_images[1])]})
    assert batch == [[{"generated_text": expected[0]}], [{"generated_text": expected[1]}]]
    short = endpoint_handler({"inputs": raw, "parameters": {"max_new_tokens": 2}})
    assert len(short[0]["generated_text"]) <= len(expected[0])


def test_handler_takes_wrapped_and_url_safe_base64_and_the_inference_api_parameters(
    endpoint_handler, handler_folder, product_images
):
    expected = local_captions(handler_folder, product_images[:1])[0]
    raw = png_bytes(product_images[0])
    # `base64 shirt.jpg` and MIME wrap lines at 76 characters; browsers' base64url uses -_ and drops the padding
    for encoded in (base64.encodebytes(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        assert endpoint_handler({"inputs": encoded}) == [{"generated_text": expected}]
    # the image-to-text task spec's parameters: generation options under "generation_parameters"
    short = endpoint_handler({"inputs": raw, "parameters": {"generation_parameters": {"max_new_tokens": 1}}})
    assert short == endpoint_handler({"inputs": raw, "parameters": {"max_new_tokens": 1}}) != [
        {"generated_text": expected}]
    with pytest.raises(ValueError, match=r"\['max_new_tokens'\] given twice"):
        endpoint_handler({"inputs": raw, "parameters": {"generation_parameters": {"max_new_tokens": 1},
                                                        "generate_kwargs": {"max_new_tokens": 2}}})
    with pytest.raises(ValueError, match='"generation_parameters"\\] must be a dict'):
        endpoint_handler({"inputs": raw, "parameters": {"generation_parameters": 3}})


def test_handler_bad_inputs_are_named(endpoint_handler):
    with pytest.raises(ValueError, match="Could not read the image bytes"):
        endpoint_handler({"inputs": b"not an image at all"})
    with pytest.raises(ValueError, match="empty"):
        endpoint_handler({"inputs": b""})
    with pytest.raises(ValueError, match="http\\(s\\) URL or base64"):
        endpoint_handler({"inputs": "/etc/passwd"})  # a path is not read: endpoints take bytes, base64 or URLs
    with pytest.raises(ValueError, match="Could not read the base64 input"):
        endpoint_handler({"inputs": base64.b64encode(b"garbage bytes").decode()})
    with pytest.raises(ValueError, match='"inputs" key'):
        endpoint_handler({"image": "x"})
    with pytest.raises(ValueError, match="got int"):
        endpoint_handler({"inputs": 3})
    with pytest.raises(ValueError, match='"parameters" must be a dict'):
        endpoint_handler({"inputs": b"x", "parameters": [1]})
    with pytest.raises(ValueError, match='"inputs" is an empty list'):
        endpoint_handler({"inputs": []})
    with pytest.raises(ValueError, match='"inputs" item 1: Could not read the image bytes'):
        endpoint_handler({"inputs": [png_bytes(Image.new("RGB", (8, 8))), b"not an image"]})


# --- moda push: folder checks (no Hub needed: they fail before any request) --------------------------------------

def test_push_with_the_hub_out_of_reach_is_one_error_line(tiny_moda_dir, tmp_path, capsys, monkeypatch):
    import hub_card.push
    from hub_card.push import connection_errors

    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    for error in {ConnectionError("offline"), connection_errors()[-1]("Name or service not known")}:
        def unreachable(*args, **kwargs):
            raise error

        monkeypatch.setattr(hub_card.push, "push_model_folder", unreachable)
        assert push_main([str(folder), "me/x"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("moda push: error: cannot reach the Hub to upload") and err.count("\n") == 1, err


def test_push_rejects_folders_that_are_not_moda(tiny_moda_dir, tmp_path, capsys):
    # one "moda push: error: ..." line and exit status 1, as every moda command reports a wrong input
    assert push_main([str(tmp_path / "missing"), "me/x"]) == 1
    assert "moda push: error: Model folder not found" in capsys.readouterr().err
    no_weights = copy_model(tiny_moda_dir, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    assert push_main([str(no_weights), "me/x"]) == 1
    assert "no safetensors weights" in capsys.readouterr().err
    no_code = copy_model(tiny_moda_dir, tmp_path / "no-code")
    (no_code / "modeling_moda.py").unlink()
    assert push_main([str(no_code), "me/x"]) == 1
    assert "modeling_moda.py" in capsys.readouterr().err
    # imported by modeling_moda.py, named by no auto_map entry: without it the pushed model would not load
    no_fast_path = copy_model(tiny_moda_dir, tmp_path / "no-fast-path")
    (no_fast_path / "fast_generation_moda.py").unlink()
    assert push_main([str(no_fast_path), "me/x"]) == 1
    assert "fast_generation_moda.py" in capsys.readouterr().err
    assert push_main([str(tiny_moda_dir), "no-namespace"]) == 1
    assert "namespace/name" in capsys.readouterr().err


def test_push_names_a_bad_training_info_file_and_never_drops_it(tiny_moda_dir, tmp_path, capsys):
    folder = copy_model(tiny_moda_dir, tmp_path / "model")
    assert push_main([str(folder), "me/x", "--training_info", str(tmp_path / "missing.json")]) == 1
    assert "moda push: error: --training_info" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{hardware: 1}")
    assert push_main([str(folder), "me/x", "--training_info", str(tmp_path / "bad.json")]) == 1
    assert "is not valid JSON" in capsys.readouterr().err
    # a folder with a card (train_hf.py always writes one) keeps it: the facts given for a new card are refused
    prepare_model_folder(folder)
    card = (folder / "README.md").read_text()
    (tmp_path / "info.json").write_text(json.dumps({"hardware": "1x NVIDIA H100"}))
    assert push_main([str(folder), "me/x", "--training_info", str(tmp_path / "info.json")]) == 1
    assert "README.md exists, so the training_info given would not be used" in capsys.readouterr().err
    assert (folder / "README.md").read_text() == card


def test_push_leaves_logs_caches_and_bytecode_out():
    from huggingface_hub.utils import filter_repo_objects

    from hub_card.push import IGNORE_PATTERNS

    files = ["model.safetensors", "README.md", "handler.py", "eval/report.json", "checkpoint-5/model.safetensors",
             "runs/events.out", "training_args.bin", "__pycache__/handler.cpython-311.pyc", "adapter/x.pyc"]
    kept = list(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS))
    assert kept == ["model.safetensors", "README.md", "handler.py", "eval/report.json"]


# --- push and load through the local Hub ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_hub(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("local-hub")) as hub:
        yield hub


def test_push_then_load_by_repo_id_with_pinned_revisions(
    local_hub, tiny_moda_dir, tiny_model_and_processor, product_images, tmp_path
):
    first = copy_model(tiny_moda_dir, tmp_path / "first")
    (first / "loss_curves.png").write_bytes(png_bytes(product_images[0]))  # as train_hf.py leaves its plot
    (first / "checkpoint-5").mkdir()  # Trainer checkpoints and pickles stay local
    (first / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    (first / "training_args.bin").write_bytes(b"x")
    model, processor = tiny_model_and_processor
    second = tmp_path / "second"
    randomize_weights(copy.deepcopy(model), seed=1).save_pretrained(second)
    processor.save_pretrained(second)
    prepare_model_folder(second)  # a card written before the repo was named, as train_hf.py writes one
    first_captions, second_captions = local_captions(first, product_images), local_captions(second, product_images)
    assert first_captions != second_captions, "the second weights must describe differently to test pinning"

    _, push_output = run_script(PUSH_SCRIPT, [REPO_ROOT, first, second], local_hub.environment(tmp_path / "push-home"),
                                cwd=REPO_ROOT)
    store = local_hub.store
    commits = store.repos["local-user/moda"]["commits"]
    sha_of = {commit["message"]: sha for sha, commit in commits.items()}
    first_sha, second_sha = sha_of["Upload MODA model from first"], sha_of["New weights"]
    exp_sha = sha_of["Old on a branch"]
    # each push: the upload, then a commit whose card's usage examples name the upload's hash
    pinned = {sha: sha_of[f"Pin the card's usage examples to {sha}"] for sha in (first_sha, second_sha, exp_sha)}
    assert all(commits[card_sha]["parent"] == sha for sha, card_sha in pinned.items())
    assert all(f"at commit {sha}" in push_output for sha in pinned)
    assert commits[second_sha]["parent"] == pinned[first_sha]
    assert "moda push: error: the Hub refused the upload of" in push_output and "401" in push_output  # no token
    assert store.repos["local-user/moda"]["branches"] == {"main": pinned[second_sha], "exp": pinned[exp_sha]}
    pushed = store.files("local-user/moda", first_sha)
    assert {"README.md", "handler.py", "loss_curves.png", "model.safetensors", "modeling_moda.py",
            "processing_moda.py", "pipeline_moda.py", "configuration_moda.py", "fast_generation_moda.py",
            "image_io_moda.py", "examples/shirt.jpg", "examples/sports-shoes.jpg", "examples/dress.jpg",
            "tokenizer.json"} <= set(pushed)
    assert not any(path.startswith("checkpoint-") or path.endswith(".bin") for path in pushed)
    cards = {sha: store.blob_path(store.files("local-user/moda", card_sha)["README.md"]).read_text()
             for sha, card_sha in pinned.items()}
    for sha, card in cards.items():
        assert 'AutoModel.from_pretrained("local-user/moda"' in card and "your-username" not in card
        assert card.count(f'revision="{sha}"') == 4 and "<commit hash>" not in card
    assert "<commit hash>" in (first / "README.md").read_text()  # the folder's card, for its next push

    image_paths = []
    for i, image in enumerate(product_images):
        image_paths.append(tmp_path / f"item{i}.png")
        image.save(image_paths[-1])
    transformers_sha = store.repos["local-user/moda-transformers"]["branches"]["main"]
    assert "fast_generation_moda.py" in store.files("local-user/moda-transformers", transformers_sha)
    targets = [("local-user/moda-transformers", transformers_sha), ("local-user/moda", first_sha),
               ("local-user/moda", "main"), ("local-user/moda", "exp")]
    load_dir = tmp_path / "elsewhere"
    load_dir.mkdir()
    loaded, _ = run_script(LOAD_SCRIPT, [json.dumps(targets), *image_paths],
                           local_hub.environment(tmp_path / "fresh-home", token=False), cwd=load_dir)

    expected = {
        f"local-user/moda-transformers@{transformers_sha}": first_captions,
        f"local-user/moda@{first_sha}": first_captions,  # pinned: the old weights after the second push
        "local-user/moda@main": second_captions,
        "local-user/moda@exp": first_captions,
    }
    assert loaded == {key: {"generate": captions, "pipeline": captions} for key, captions in expected.items()}

    # Every Python snippet of the card on main runs as pasted, on the repo's example shirt, at the commit it names.
    snippets = re.findall(r"```python\n(.*?)```", cards[second_sha], re.DOTALL)
    assert len(snippets) == 3
    snippet_dir = tmp_path / "snippets"
    snippet_dir.mkdir()
    shirt = snippet_dir / "shirt.jpg"
    shutil.copyfile(store.blob_path(store.files("local-user/moda", second_sha)["examples/shirt.jpg"]), shirt)
    requests_before = len(store.requests)
    outputs, _ = run_script(SNIPPETS_SCRIPT, [json.dumps(snippets)],
                            local_hub.environment(tmp_path / "snippet-home", token=False), cwd=snippet_dir)
    downloads = [path for _, path in store.requests[requests_before:] if "/resolve/" in path]
    assert downloads and all(path.startswith(f"/local-user/moda/resolve/{second_sha}/") for path in downloads)
    with Image.open(shirt) as image:
        (caption,) = local_captions(second, [image.convert("RGB")])
    pipeline_output, generate_output, vqa_output = (ast.literal_eval(line) for output in outputs
                                                    for line in output.splitlines()[:1])
    assert pipeline_output == [{"generated_text": caption}]
    assert outputs[0].splitlines()[1].startswith("[{'generated_text': ")  # the same photo, asked a question
    assert len(generate_output) == 1 and generate_output[0].startswith(caption)  # 32 new tokens, not 8
    question = "What colour is this item?"
    assert len(vqa_output) == 1 and not vqa_output[0]["generated_text"].startswith(question)  # the answer alone
