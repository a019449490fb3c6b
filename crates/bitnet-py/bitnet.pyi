"""Type stubs of the `bitnet` extension module (crates/bitnet-py, PyO3)."""

import os
from typing import Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

Prompt = Union[str, Sequence[int]]
Message = Mapping[str, str]
Stop = Union[str, Sequence[str]]

class BitnetError(Exception):
    """Base class of every error raised by bitnet; the message is the engine's."""

class ModelError(BitnetError):
    """The model file or folder is missing, unreadable or invalid."""

class InputError(BitnetError, ValueError):
    """An argument the engine rejects: a prompt longer than the context, a token id outside the
    vocabulary, an empty prompt, an invalid sampling setting."""

class Completion:
    """The result of `Model.complete` (and `TextStream.completion`)."""

    @property
    def text(self) -> str: ...
    @property
    def tokens(self) -> List[int]: ...
    @property
    def finish_reason(self) -> str:
        """"eos", "stop", "length", "context_full" or "cancelled"."""
    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens computed (fewer than the prompt when its start was still cached)."""
    @property
    def prompt_seconds(self) -> float: ...
    @property
    def generation_seconds(self) -> float: ...

class TextStream(Iterator[str]):
    """Pieces of generated text as they are decoded; leaving the loop early stops generating."""

    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None:
        """Stops the generation; the iterator then ends."""
    @property
    def completion(self) -> Optional[Completion]:
        """The finished generation, once the iterator is exhausted (None if closed early)."""

class Model:
    """A BitNet b1.58 model (GGUF file or Hugging Face folder) loaded by the bitnet-rs engine.

    threads: worker threads (default: physical cores); ctx: context in tokens (default: the
    model's trained context); kv_type: "f16" or "f32" KV cache; mmap: keep weights in the file
    mapping. Raises ModelError if the model cannot be loaded.
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        threads: Optional[int] = None,
        ctx: Optional[int] = None,
        *,
        kv_type: str = "f16",
        mmap: bool = False,
    ) -> None: ...
    @staticmethod
    def from_bytes(
        data: bytes,
        name: str = "memory.gguf",
        threads: Optional[int] = None,
        ctx: Optional[int] = None,
        *,
        kv_type: str = "f16",
    ) -> "Model":
        """A model from the bytes of a GGUF file held in memory."""
    @property
    def vocab_size(self) -> int: ...
    @property
    def ctx(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def bos_id(self) -> Optional[int]: ...
    @property
    def eos_ids(self) -> List[int]: ...
    @property
    def chat_template(self) -> Optional[str]: ...
    def tokenize(self, text: str, add_bos: Optional[bool] = None) -> List[int]: ...
    def detokenize(self, tokens: Sequence[int], skip_special: bool = False) -> str: ...
    def logits(
        self, tokens: Sequence[int], *, last_only: bool = False
    ) -> npt.NDArray[np.float32]:
        """float32 logits, shape (len(tokens), vocab_size), or (vocab_size,) with last_only."""
    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_last_n: Optional[int] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Stop] = None,
        ignore_eos: Optional[bool] = None,
        add_bos: Optional[bool] = None,
    ) -> str:
        """The generated text. None keeps the default: max_tokens 128, temperature 0.8
        (0 = greedy), top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0, repeat_last_n 64,
        penalties 0, a random seed, no stop strings."""
    def complete(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_last_n: Optional[int] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Stop] = None,
        ignore_eos: Optional[bool] = None,
        add_bos: Optional[bool] = None,
    ) -> Completion: ...
    def stream(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_last_n: Optional[int] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Stop] = None,
        ignore_eos: Optional[bool] = None,
        add_bos: Optional[bool] = None,
    ) -> TextStream: ...
    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_last_n: Optional[int] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Stop] = None,
        ignore_eos: Optional[bool] = None,
    ) -> str: ...
    def chat_stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        repeat_last_n: Optional[int] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Stop] = None,
        ignore_eos: Optional[bool] = None,
    ) -> TextStream: ...
    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str: ...
    def perplexity(self, text: str, *, chunk: int = 256) -> float: ...
