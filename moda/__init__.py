"""The MODA workshop: training, evaluation, catalog tools around the model files at the repository root.

Importing it registers MODA with transformers' Auto classes, so that local code loads MODA folders without running
the folders' own copies of the model files (no trust_remote_code prompt).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from configuration_moda import MODAConfig
from modeling_moda import MODAForConditionalGeneration
from processing_moda import MODAProcessor

AutoConfig.register("moda", MODAConfig, exist_ok=True)
AutoModel.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MODAConfig, MODAProcessor, exist_ok=True)
