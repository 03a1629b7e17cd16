"""VLM backends: local transformers models, OpenAI-compatible endpoints, a scripted oracle."""

from rewards.backends.base import VLMBackend, VLMError, VLMReply, VLMRequest, hash_image
from rewards.backends.factory import make_backend

__all__ = ["VLMBackend", "VLMError", "VLMReply", "VLMRequest", "hash_image", "make_backend"]
