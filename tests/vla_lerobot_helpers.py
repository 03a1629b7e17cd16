"""Tiny LeRobot flow VLAs (SmolVLA, pi0) built offline for ``lang_reach``, for tests.

Both are randomly initialised from configs and saved the way ``lerobot-train`` saves a
checkpoint (``save_pretrained`` of the policy and of its pre/post-processors, with dataset
statistics), so they load back through LeRobot's own ``from_pretrained`` path:

- SmolVLA builds its VLM from ``vlm_model_name`` in its constructor (config + processor, even
  with ``load_vlm_weights=False``): :func:`tiny_vlm` writes a local folder with a two-layer
  SmolVLM config, a character-level tokenizer carrying SmolVLM's image tokens, and an
  Idefics3 processor (SmolVLM's own processor needs ``num2words``, which the project does not
  install; SmolVLA reads only the processor's tokenizer);
- pi0 has no config field for its sizes (only the ``gemma_2b`` / ``gemma_300m`` variants, a
  SigLIP-So400m tower and PaliGemma's 257k vocabulary): :func:`tiny_pi_gemma` swaps LeRobot's
  variant table and the PaliGemma / Gemma-expert constructors for tiny ones while it is
  active, and a pi0 checkpoint builds and loads only inside it. Its tokenizer step names the
  local tokenizer instead of ``google/paligemma-3b-pt-224``.

Inputs are ``lang_reach``'s: the top camera at 64 px and the gripper's proprioception (4);
actions are 2-d in [-1, 1].
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

IMAGE, STATE, ACTION = 64, 4, 2
CHUNK, EXECUTE = 8, 4
MAX_DIM = 8  # max_state_dim = max_action_dim: the padded width both models work in
TOKENS = 48  # tokenizer_max_length (characters)
VOCAB = 128  # pi0's tiny embedding rows (>= the tokenizer's vocabulary)
ENV = dict(pixels=True, cameras=["top"], image_size=IMAGE, proprio_only=True)  # configs/env/lang_reach.yaml


def stats() -> dict:
    """Dataset statistics for the normaliser: state as is, actions with std 0.5."""
    return {"observation.state": {"mean": torch.zeros(STATE), "std": torch.ones(STATE)},
            "action": {"mean": torch.zeros(ACTION), "std": torch.full((ACTION,), 0.5)}}


def features():
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {"observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
              "observation.state": PolicyFeature(FeatureType.STATE, (STATE,))}
    return inputs, {"action": PolicyFeature(FeatureType.ACTION, (ACTION,))}


def tiny_vlm(folder: Path) -> Path:
    """A two-layer SmolVLM config, its tokenizer (one token per character, SmolVLM's image
    tokens as named special tokens) and an Idefics3 processor, saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Idefics3ImageProcessor, Idefics3Processor, PreTrainedTokenizerFast, SmolVLMConfig

    special = ["<pad>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
               "<global-img>"]
    vocab = {tok: i for i, tok in enumerate(special + [chr(c) for c in range(32, 127)] + ["\n"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        extra_special_tokens={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    config = SmolVLMConfig(
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=512, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IMAGE, patch_size=16),
        scale_factor=2, image_token_id=vocab["<image>"])
    config.save_pretrained(folder)
    Idefics3Processor(image_processor=Idefics3ImageProcessor(), tokenizer=tokenizer,
                      image_seq_len=4).save_pretrained(folder)
    return folder


def _save(policy, cfg, folder: Path, pre_post) -> Path:
    pre, post = pre_post(cfg, dataset_stats=stats())
    policy.save_pretrained(folder)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    return folder


def smolvla_checkpoint(folder: Path, vlm: Path, seed: int = 0) -> Path:
    """A ~100k-parameter SmolVLA (2 VLM layers, width 32; expert width 24) saved to ``folder``."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    inputs, outputs = features()
    cfg = SmolVLAConfig(input_features=inputs, output_features=outputs, chunk_size=CHUNK, n_action_steps=EXECUTE,
                        vlm_model_name=str(vlm), load_vlm_weights=False, num_vlm_layers=2,
                        resize_imgs_with_padding=(IMAGE, IMAGE), max_state_dim=MAX_DIM, max_action_dim=MAX_DIM,
                        tokenizer_max_length=TOKENS, device="cpu")
    torch.manual_seed(seed)
    return _save(SmolVLAPolicy(cfg), cfg, folder, make_pre_post_processors)


def _tiny_gemma(variant: str):
    from lerobot.policies.pi0.modeling_pi0 import GemmaConfig

    width = 32 if variant == "gemma_2b" else 16  # the VLM, then the action expert
    # 8 query heads and 1 key/value head as both real variants: pi0's joint (training) forward
    # reshapes attention outputs with those counts written out
    return GemmaConfig(width=width, depth=2, mlp_dim=2 * width, num_heads=8, num_kv_heads=1, head_dim=4)


@contextmanager
def tiny_pi_gemma():
    """While active, LeRobot's pi0 builds a tiny PaliGemma (2 layers of width 32, a one-layer
    SigLIP of width 32 with 16-pixel patches, 128 vocabulary rows) and a 2-layer Gemma expert
    of width 16 (8 query heads of 4 dims, as many as the real variants) instead of gemma_2b +
    gemma_300m. Everything else is LeRobot's own code."""
    from unittest import mock

    from lerobot.policies.pi0 import modeling_pi0

    class TinyPaliGemma(modeling_pi0.PaliGemmaForConditionalGenerationWithPiGemma):
        def __init__(self, config):
            vision = config.vision_config
            vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = 32, 64, 1
            vision.num_attention_heads, vision.patch_size = 2, 16
            vision.projection_dim = config.text_config.hidden_size
            config.text_config.vocab_size = VOCAB
            super().__init__(config)

    class TinyGemmaExpert(modeling_pi0.PiGemmaForCausalLM):
        def __init__(self, config, **kw):
            config.vocab_size = VOCAB
            super().__init__(config, **kw)

    with mock.patch.object(modeling_pi0, "get_gemma_config", _tiny_gemma), \
            mock.patch.object(modeling_pi0, "PaliGemmaForConditionalGenerationWithPiGemma", TinyPaliGemma), \
            mock.patch.object(modeling_pi0, "PiGemmaForCausalLM", TinyGemmaExpert):
        yield


def pi0_checkpoint(folder: Path, tokenizer: Path, seed: int = 0) -> Path:
    """A tiny pi0 (see :func:`tiny_pi_gemma`; build and load it inside that context) saved to
    ``folder``; its pre-processor tokenizes with the tokenizer saved at ``tokenizer``."""
    from unittest import mock

    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.pi0 import processor_pi0
    from lerobot.policies.pi0.configuration_pi0 import PI0Config
    from lerobot.policies.pi0.modeling_pi0 import PI0Policy
    from lerobot.processor import TokenizerProcessorStep

    def local_tokenizer(**kw):
        return TokenizerProcessorStep(**{**kw, "tokenizer_name": str(tokenizer)})

    inputs, outputs = features()
    cfg = PI0Config(input_features=inputs, output_features=outputs, chunk_size=CHUNK, n_action_steps=EXECUTE,
                    image_resolution=(IMAGE, IMAGE), max_state_dim=MAX_DIM, max_action_dim=MAX_DIM,
                    tokenizer_max_length=TOKENS, dtype="float32", device="cpu")
    with tiny_pi_gemma():
        torch.manual_seed(seed)
        policy = PI0Policy(cfg)
    with mock.patch.object(processor_pi0, "TokenizerProcessorStep", local_tokenizer):
        return _save(policy, cfg, folder, make_pre_post_processors)
