"""MODA's classes, registered with transformers' Auto classes on import.

Local code imports the model classes from here: once "moda" is a registered model type, AutoConfig, AutoModel,
AutoProcessor (and the tokenizer a processor loads) read MODA folders with this checkout's code, without running the
folders' own copies of the model files and without a trust_remote_code prompt. The registration lives here, not in
`moda/__init__.py`, so that commands which never touch a model (`moda --help`, `moda search`) do not import it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from configuration_moda import MODAConfig
from modeling_moda import MODAForConditionalGeneration
from processing_moda import MODAProcessor

AutoConfig.register("moda", MODAConfig, exist_ok=True)
AutoModel.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MODAConfig, MODAProcessor, exist_ok=True)

__all__ = ["MODAConfig", "MODAForConditionalGeneration", "MODAProcessor"]
