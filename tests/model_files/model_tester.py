"""A self-contained tester for MODA's model files, in the manner of transformers' model testers
(e.g. `LlavaVisionText2TextModelTester`): tiny configs from plain dicts, the model, and its inputs made with torch.

It needs only the root model files (configuration_moda.py, modeling_moda.py and what they import), transformers and
torch: no tokenizer is trained, the workshop package (`moda`) is not imported and nothing is read from or written to
disk. Token ids are drawn at random from the tiny vocabulary; the special tokens have the ids of the workshop's
trained caption tokenizer (BOS 0, PAD 1, EOS 2, UNK 3), which random ids never take.
"""

import torch

from configuration_moda import MODAConfig
from modeling_moda import MODAForConditionalGeneration

IGNORE_INDEX = -100


def randomize_weights(model, std=0.3, seed=0):
    """Random init gives near-constant greedy output; bigger random weights make tokens differ per image."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def moda_around_opt(text_config):
    """A MODA (eval mode) of a one-layer 32-px vision tower with 24-d image embeddings around the given OPT config
    (an OPTConfig or a dict): for tests of decoder layouts that the tester's own config does not have."""
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, projection_dim=24)
    return MODAForConditionalGeneration(MODAConfig(vision_config=vision, text_config=text_config)).eval()


class MODAModelTester:
    """Tiny MODA configs (under 1M parameters), models and inputs: pixel_values, input_ids, attention_mask, labels."""

    def __init__(
        self,
        batch_size=2,
        # vision tower (CLIPVisionConfig)
        image_size=32,
        patch_size=8,
        num_channels=3,
        vision_hidden_size=32,
        vision_num_hidden_layers=2,
        vision_num_attention_heads=2,
        projection_dim=24,
        # decoder (OPTConfig)
        vocab_size=300,  # > 257 and not prime: greedy decoding takes the chunked first-max (fast_generation_moda.py)
        text_hidden_size=32,
        text_num_hidden_layers=2,
        text_num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        unk_token_id=3,
        # MODA's own options
        num_image_tokens=1,
        freeze_vision_tower=True,
        # the model's weights and generation defaults
        weight_std=0.3,
        max_new_tokens=8,
        seed=0,
    ):
        self.batch_size = batch_size
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.vision_hidden_size = vision_hidden_size
        self.vision_num_hidden_layers = vision_num_hidden_layers
        self.vision_num_attention_heads = vision_num_attention_heads
        self.projection_dim = projection_dim
        self.vocab_size = vocab_size
        self.text_hidden_size = text_hidden_size
        self.text_num_hidden_layers = text_num_hidden_layers
        self.text_num_attention_heads = text_num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.bos_token_id, self.pad_token_id = bos_token_id, pad_token_id
        self.eos_token_id, self.unk_token_id = eos_token_id, unk_token_id
        self.num_image_tokens = num_image_tokens
        self.freeze_vision_tower = freeze_vision_tower
        self.weight_std, self.max_new_tokens, self.seed = weight_std, max_new_tokens, seed

    # --- configs ------------------------------------------------------------------------------------------------

    def get_vision_config(self) -> dict:
        return dict(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.vision_hidden_size,
            intermediate_size=4 * self.vision_hidden_size,
            num_hidden_layers=self.vision_num_hidden_layers,
            num_attention_heads=self.vision_num_attention_heads,
            projection_dim=self.projection_dim,
        )

    def get_text_config(self) -> dict:
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.text_hidden_size,
            word_embed_proj_dim=self.text_hidden_size,
            ffn_dim=4 * self.text_hidden_size,
            num_hidden_layers=self.text_num_hidden_layers,
            num_attention_heads=self.text_num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            dropout=0.0,
        )

    def get_moda_options(self) -> dict:
        return dict(num_image_tokens=self.num_image_tokens, freeze_vision_tower=self.freeze_vision_tower)

    def get_config(self, vision_config=None, text_config=None, **options) -> MODAConfig:
        """The tiny config; `vision_config` / `text_config` dicts update the tester's, `options` MODA's."""
        return MODAConfig(
            vision_config={**self.get_vision_config(), **(vision_config or {})},
            text_config={**self.get_text_config(), **(text_config or {})},
            **{**self.get_moda_options(), **options},
        )

    # --- models -------------------------------------------------------------------------------------------------

    def create_model(self, config=None, randomize=True) -> MODAForConditionalGeneration:
        """A model in eval mode: with `randomize` its weights are large enough that the tokens differ per image;
        greedy generation of up to `max_new_tokens` that stops at EOS and pads with PAD."""
        torch.manual_seed(self.seed)
        model = MODAForConditionalGeneration(config if config is not None else self.get_config())
        if randomize:
            randomize_weights(model, std=self.weight_std, seed=self.seed)
        model.generation_config.update(
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
            max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
        )
        return model.eval()

    # --- inputs -------------------------------------------------------------------------------------------------

    def pixel_values(self, batch=None, seed=0) -> torch.Tensor:
        batch = self.batch_size if batch is None else batch
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.num_channels, self.image_size, self.image_size, generator=generator)

    def token_ids(self, length, generator) -> list:
        """`length` ordinary tokens (never a special token)."""
        first = max(self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id) + 1
        return torch.randint(first, self.vocab_size, (length,), generator=generator).tolist()

    def pad(self, rows, padding_side="right", pad_value=None):
        """Rows of ids -> (ids, attention_mask), padded with PAD (or `pad_value`) on `padding_side`."""
        pad_value = self.pad_token_id if pad_value is None else pad_value
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    def prepare_config_and_inputs(self, prompt_lengths=(2, 0), description_lengths=(2, 5), padding_side="right",
                                  seed=0, config=None):
        """Training inputs as MODAProcessor makes them: each row [BOS] + prompt + description + [EOS], labels -100
        but on the description and its EOS, padded on `padding_side` (PAD, mask 0, label -100)."""
        if len(prompt_lengths) != len(description_lengths):
            raise ValueError("one prompt length and one description length per row")
        generator = torch.Generator().manual_seed(seed)
        ids, labels = [], []
        for prompt_length, description_length in zip(prompt_lengths, description_lengths):
            prompt = [self.bos_token_id] + self.token_ids(prompt_length, generator)
            description = self.token_ids(description_length, generator) + [self.eos_token_id]
            ids.append(prompt + description)
            labels.append([IGNORE_INDEX] * len(prompt) + description)
        input_ids, attention_mask = self.pad(ids, padding_side)
        labels, _ = self.pad(labels, padding_side, pad_value=IGNORE_INDEX)
        inputs = dict(pixel_values=self.pixel_values(len(ids), seed=seed), input_ids=input_ids,
                      attention_mask=attention_mask, labels=labels)
        return (config if config is not None else self.get_config()), inputs

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()

    def prepare_generation_inputs(self, prompt_lengths=(6, 0, 7, 1), seed=0) -> dict:
        """Inputs for generate as MODAProcessor makes them: [BOS] + prompt, left-padded; one image a row."""
        generator = torch.Generator().manual_seed(seed)
        rows = [[self.bos_token_id] + self.token_ids(length, generator) for length in prompt_lengths]
        input_ids, attention_mask = self.pad(rows, padding_side="left")
        return dict(pixel_values=self.pixel_values(len(rows), seed=seed), input_ids=input_ids,
                    attention_mask=attention_mask)
