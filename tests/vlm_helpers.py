"""Shared helpers of the VLM reward tests: synthetic and simulated episodes with known progress."""

from __future__ import annotations

import numpy as np

from envs.builtin.scripted import reach_episodes  # noqa: F401  (re-exported for the tests)


def render(request) -> str:
    """A request as text, each image shown as ``<image>``: what prompt snapshots pin."""
    return "".join(p if isinstance(p, str) else "<image>" for p in request.parts)


def synthetic_episode(num_steps: int = 40, size: int = 24, seed: int = 0):
    """Distinct frames (a square sliding right) and a monotone true progress in [0, 1]."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_steps + 1, size, size, 3), np.uint8)
    frames[..., 2] = rng.integers(0, 255)
    for t in range(num_steps + 1):
        x = int(round(t / num_steps * (size - 4)))
        frames[t, 10:14, x : x + 4, 0] = 255
        frames[t, 0, 0, 1] = t  # keeps every frame distinct even where the square does not move
    progress = (np.arange(num_steps + 1) / num_steps) ** 1.3
    return frames, progress


def build_tiny_qwen2vl(folder) -> str:
    """Save a randomly initialised ~80k-parameter Qwen2-VL (character-level tokenizer,
    14-pixel patches, one layer each) with its processor to ``folder``; returns the path.
    Everything is built offline from configs and loads back through the real
    ``AutoProcessor`` / ``AutoModelForImageTextToText`` path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    vocab = {tok: i for i, tok in enumerate(special + [chr(c) for c in range(32, 127)] + ["\n"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    core.decoder = decoders.Fuse()
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=special[1:])
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14,
                                              temporal_patch_size=2, merge_size=2),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=template)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=ids("<|im_start|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2, in_channels=3),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
