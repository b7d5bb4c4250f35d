"""Loading a model the user names (a folder or a Hub id) without running code of its own unasked.

A model's config.json is read as JSON first (read_model_config), and check_model_code decides from it whether the
model may load and with which trust_remote_code: a MODA model always loads with this package's code
(moda.model.auto_classes), never with the copies of the model files a folder or Hub repo carries.

    captioner = load_captioner("./moda-demo")                       # the image-to-text pipeline (moda caption, app)
    captioner = load_captioner("./moda-demo", precision="auto")     # bf16 where the CPU computes it natively
    model, processor = load_model_and_processor("./moda-demo")      # MODA or a BLIP baseline (moda eval)
"""

from pathlib import Path

from transformers import PretrainedConfig, pipeline

from moda.io.paths import looks_like_a_path
from fast_generation_moda import check_precision, inference_dtype
from pipeline_moda import MODAImageToTextPipeline


def check_model_name(model_name: str, label: str = "--model") -> None:
    """A mistyped folder would otherwise be looked up on the Hub, and an empty one read as a model of type None.
    `label`: what the user called the model (the option's name)."""
    if Path(model_name).is_dir() and not (Path(model_name) / "config.json").is_file():
        raise FileNotFoundError(f"{label} {model_name!r} is a folder without config.json: not a saved model folder.")
    if looks_like_a_path(model_name) and not Path(model_name).exists():
        raise FileNotFoundError(f"{label} {model_name!r}: no such model folder.")


def model_load_error(model_name: str, err: OSError, folder_problem: str, label: str = "--model") -> Exception:
    """
    The input error to raise for a model transformers could not load (`err`): for a folder, `folder_problem` (what
    went wrong there); for any other name, that neither a local folder nor a Hub model (the Hub may be out of reach)
    has it.
    """
    reason = f"({type(err).__name__}: {' '.join(str(err).split())})"
    if Path(model_name).is_dir():
        return ValueError(f"{label} {model_name!r}: {folder_problem} {reason}")
    return FileNotFoundError(f"{label} {model_name!r}: no local model folder of that name, and no Hub model of that "
                             f"name could be loaded {reason}")


# The model type that always loads with this package's code (moda.model.auto_classes registers it).
MODA_MODEL_TYPE = "moda"


def read_model_config(model_name: str, revision: str = None, label: str = "--model") -> dict:
    """
    The config.json of a model folder or Hub model, read as JSON: nothing of the model is imported. A missing folder,
    an unreadable config.json, a Hub model out of reach, or a config without a model_type (which decides the code
    that reads it) raises an input error naming `model_name`.
    """
    check_model_name(model_name, label)
    try:
        config = PretrainedConfig.get_config_dict(model_name, revision=revision)[0]
    except OSError as err:
        raise model_load_error(model_name, err, "its config.json cannot be read", label) from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"{label} {model_name!r}: its config.json names no model_type, so nothing tells which code "
                         "reads the model.")
    return config


def check_model_code(model_name: str, revision: str = None, trust_remote_code: bool = False,
                     label: str = "--model") -> bool:
    """
    The trust_remote_code value to load `model_name` with, decided from its config.json (read as JSON) before
    anything of the model is imported.

    A MODA model: False, even with `trust_remote_code`. This package's code reads it (moda.model.auto_classes), never the
    copies of the model files a folder or Hub repo carries; and transformers, told True, would still run a folder's
    tokenizer auto_map or custom_generate/generate.py. Any other model that needs code of its own (a model_type
    transformers does not know, or an auto_map naming its own files) raises ValueError naming it, unless
    `trust_remote_code` (the commands' --trust_remote_code) allows it. Other models load with `trust_remote_code` as
    given.
    """
    from transformers import CONFIG_MAPPING

    config = read_model_config(model_name, revision, label)
    model_type = config["model_type"]
    if model_type == MODA_MODEL_TYPE:
        return False
    if model_type not in CONFIG_MAPPING:
        needs = f"its model_type {model_type!r} is not one transformers knows"
    elif config.get("auto_map"):
        needs = f"its config.json's auto_map names files of its own for the {model_type!r} model type"
    else:
        return bool(trust_remote_code)
    if not trust_remote_code:
        raise ValueError(f"{label} {model_name!r} needs its own code to load ({needs}), and a model's own code runs "
                         "only when asked: --trust_remote_code allows it (only for a model whose code you trust).")
    return True


EVAL_MODEL_TYPES = (MODA_MODEL_TYPE, "blip")


def eval_model_type(model_name: str, revision: str = None) -> str:
    """
    The model type of a model moda eval reads: MODA or BLIP, both loaded with installed code (this package's and
    transformers'), so eval never runs a model's own code. Anything else raises ValueError naming it.
    """
    model_type = read_model_config(model_name, revision)["model_type"]
    if model_type not in EVAL_MODEL_TYPES:
        raise ValueError(f"--model {model_name!r} is a {model_type!r} model; moda eval reads MODA and BLIP captioners "
                         "(with installed code, never a model's own).")
    return model_type


def load_model_and_processor(model_name: str, revision: str = None):
    """A MODA folder or Hub id (or a BLIP baseline trained by train_hf.py) -> (model in eval mode, processor)."""
    if eval_model_type(model_name, revision) == MODA_MODEL_TYPE:
        # trust_remote_code=False said outright: left unset, transformers asks on stdin whether to run the code that a
        # folder's tokenizer_config.json names, and a "y" runs it.
        from moda.model.auto_classes import MODAForConditionalGeneration, MODAProcessor

        model = MODAForConditionalGeneration.from_pretrained(model_name, revision=revision, trust_remote_code=False)
        processor = MODAProcessor.from_pretrained(model_name, revision=revision, trust_remote_code=False)
    else:
        from moda.model.blip_baseline import load_blip

        model, processor = load_blip(model_name)
    return model.eval(), processor


def load_captioner(model: str, revision: str = None, device: str = None, trust_remote_code: bool = False,
                   precision: str = "fp32"):
    """
    The image-to-text pipeline for a MODA folder or Hub id (the same code path users get from transformers), run
    by this package's model code: under transformers 5.x a registered model type wins over the folder's own copy
    of the model files, which may be older (or, from the Hub, someone else's).

    Its model runs in `precision` on the pipeline's device (fast_generation_moda.inference_dtype: "auto" is bf16 on a
    CPU that computes bf16 natively, fp32 elsewhere; "fp32" or "bf16" as asked); the model casts pixel_values to its
    own dtype. The default is fp32, as before, for callers that do not choose (moda index's image embeddings); the
    captioning commands and the app pass their --precision, whose default is "auto".

    A model's own code never runs unless `trust_remote_code` allows it, and a MODA model's never
    (check_model_code decides, from config.json, before anything of the model is imported).

    A missing folder, a folder without config.json, or a name that is neither a loadable folder nor a Hub model raises
    FileNotFoundError naming `model` (ValueError for a folder that cannot be read as a model, or one that needs its
    own code).
    """
    import moda.model.auto_classes  # noqa: F401  (the registration; imported here so that `moda --help` stays light)

    run_own_code = check_model_code(model, revision, trust_remote_code, label="model")
    check_precision(precision)  # before the model loads
    try:
        captioner = pipeline(
            "image-to-text", model=model, revision=revision, device=device, trust_remote_code=run_own_code,
            pipeline_class=MODAImageToTextPipeline,
        )
    except (OSError, ValueError) as err:
        # e.g. a folder without weights (transformers' "Could not load model ... with any of the following classes",
        # a ValueError of several lines), or a config.json that is not JSON (an OSError)
        raise model_load_error(model, err, "the folder cannot be loaded as a model", label="model") from err
    # Converted after loading: which precision "auto" means depends on the device the pipeline chose.
    captioner.model.to(inference_dtype(precision, captioner.device))
    return captioner
