"""Local Hugging Face vision-language models through transformers' image-text-to-text classes.

``AutoProcessor`` + ``AutoModelForImageTextToText`` load Qwen2-VL / Qwen2.5-VL / Qwen3-VL,
InternVL (the ``-hf`` checkpoints), SmolVLM / Idefics3, LLaVA and similar from a hub id
(e.g. ``Qwen/Qwen2.5-VL-3B-Instruct``; needs the weights in the HF cache when
``HF_HUB_OFFLINE=1``) or a local folder. The prompt goes through the processor's own
chat template (text and image parts in order, the system message first); requests are
batched with left padding and decoded greedily at temperature 0.

VLAC checkpoints (``InternRobotics/VLAC``, InternVL2-based) are stored in InternVL's
original format, which needs the model repository's own Python code: transformers runs it
only with ``trust_remote_code=True``, which this backend never sets unless you opt in
with ``backend.trust_remote_code: true`` (it executes code downloaded from the hub), and
even then the original format ships no image-text-to-text processor. The supported ways
to run VLAC are (a) serving the checkpoint with an OpenAI-compatible server (LMDeploy or
vLLM, which implement InternVL2) and using the ``openai`` backend, or (b) converting it to
the transformers ``InternVL`` (``-hf``) layout and loading that folder here.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from rewards.backends.base import VLMBackend, VLMError, VLMReply, VLMRequest

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def to_messages(request: VLMRequest) -> list[dict[str, Any]]:
    """A request as chat-template messages: the parts in order in one user turn."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in request.parts if
               not (isinstance(p, str) and not p)]
    messages = [{"role": "system", "content": [{"type": "text", "text": request.system}]}] if request.system else []
    return messages + [{"role": "user", "content": content}]


class HFBackend(VLMBackend):
    """A transformers VLM on CPU or GPU, batched generation."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        logprobs: bool = True,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ):
        """
        model: hub id or local folder holding the processor and the weights.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        batch_size: requests per ``generate`` call.
        logprobs: return the log-prob of each generated token.
        trust_remote_code: run Python code shipped with the model repository. Off by default:
            it executes code from the network; turn it on only for a repository you trust.
        revision: git revision (branch, tag, commit) of a hub model.
        """
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if dtype not in _DTYPES:
            raise ValueError(f"backend.dtype must be one of {_DTYPES}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"backend.batch_size must be >= 1, got {batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.model_id, self.device, self.batch_size, self.logprobs = model, device, batch_size, logprobs
        kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
        try:
            self.processor = AutoProcessor.from_pretrained(model, **kwargs)
            self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(torch, dtype), **kwargs)
        except OSError as e:
            raise VLMError(f"cannot load VLM {model!r}: not a local folder with a processor and weights, nor in "
                           f"the HF cache (offline?); set backend.model ({str(e).splitlines()[0][:120]})") from None
        except ValueError as e:
            hint = "" if trust_remote_code else " If it needs its repository's own code, opt in with backend.trust_remote_code: true."
            raise VLMError(f"transformers cannot load {model!r} as an image-text-to-text model: "
                           f"{str(e).splitlines()[0][:160]}.{hint}") from None
        self.model.to(device).train(False)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _run(self, requests: Sequence[VLMRequest]) -> list[VLMReply]:
        """One batch sharing max_tokens, temperature and whether images are present."""
        import torch
        from PIL import Image

        texts = [self.processor.apply_chat_template(to_messages(r), add_generation_prompt=True, tokenize=False)
                 for r in requests]
        images = [[Image.fromarray(im) for im in r.images] for r in requests]
        inputs = self.processor(text=texts, images=images if any(images) else None, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        first = requests[0]
        sampling = {"do_sample": True, "temperature": first.temperature} if first.temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=first.max_tokens, return_dict_in_generate=True,
                                      output_logits=self.logprobs, pad_token_id=self.tokenizer.pad_token_id, **sampling)
        new = out.sequences[:, inputs["input_ids"].shape[1]:]
        special = set(self.tokenizer.all_special_ids)
        replies = []
        for b, tokens in enumerate(new.tolist()):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            logprobs = None
            if self.logprobs:
                logprobs = []
                for step, tok in enumerate(tokens):
                    if tok in special:
                        if tok == self.tokenizer.eos_token_id or tok == self.tokenizer.pad_token_id:
                            break
                        continue
                    lp = torch.log_softmax(out.logits[step][b].float(), dim=-1)[tok].item()
                    logprobs.append((self.tokenizer.decode([tok]), lp))
            replies.append(VLMReply(text, logprobs))
        return replies

    def iter_generate(self, requests: Sequence[VLMRequest]) -> Iterator[tuple[int, VLMReply]]:
        from tqdm.auto import tqdm

        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((bool(r.images), r.max_tokens, r.temperature), []).append(i)
        batches = [idx[s : s + self.batch_size] for idx in groups.values() for s in range(0, len(idx), self.batch_size)]
        for batch in tqdm(batches, desc=f"VLM {self.model_id}", disable=len(batches) < 2, leave=False):
            for i, reply in zip(batch, self._run([requests[i] for i in batch])):
                yield i, reply

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMReply]:
        return self._gather(requests)

    def close(self) -> None:
        self.model = None
