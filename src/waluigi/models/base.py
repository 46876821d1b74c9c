"""The one small interface every model backend implements.

A :class:`Generator` turns chat prompts plus sampling settings into completions, and
(for judging) a chat prompt into the distribution of the assistant's first token.
Backends: ``hf`` (transformers, also the embedded ``smollm2``), ``openai`` (any
OpenAI-compatible server), ``vllm`` (optional GPU extra). See ``load_model``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 600
    stop: tuple[str, ...] = ()


@dataclass
class GenerationRequest:
    """One completion to produce. ``seed`` fixes the sample regardless of batching."""

    messages: list[Message]
    seed: int = 0
    params: SamplingParams = field(default_factory=SamplingParams)
    top_logprobs: int | None = None  # if set, return the top-k logprobs of every generated token


@dataclass
class TextRequest:
    """One raw-text completion (``/v1/completions``): ``prompt`` is continued as it is, with
    no chat template; it is text, or token ids of the model's own tokenizer."""

    prompt: str | list[int]
    seed: int = 0
    params: SamplingParams = field(default_factory=SamplingParams)
    top_logprobs: int | None = None


@dataclass(frozen=True)
class OptionRequest:
    """Score answer options after a prompt (probe items): ``prompt`` is chat messages (the
    model's chat template, assistant turn opened) or a raw text (a document start); each option
    is a continuation whose log-probability is the sum over its tokens."""

    prompt: list[Message] | str
    options: tuple[str, ...]


@dataclass
class OptionScores:
    """Per option: the summed log-probability of its tokens, its token count, its first token's
    id and that token's log-probability alone (options sharing a first token share it)."""

    logprobs: list[float]
    n_tokens: list[int]
    first_token_logprobs: list[float]
    prompt_tokens: int = 0
    first_tokens: list[int] = field(default_factory=list)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]  # the top-k (token, logprob) at this position, best first


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


Progress = Callable[[int], None]  # called with the number of items just finished


class Generator(ABC):
    """A chat model behind a spec string (``hf:PATH``, ``smollm2``, ``openai:MODEL``, ...).

    ``calls`` counts the requests this object has sent to its model; the pipeline records
    it so that a finished run can prove it made none.
    """

    spec: str
    calls: int = 0

    @abstractmethod
    def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[tuple[int, Completion]]:
        """Yield ``(index into requests, completion)`` as completions finish, in any order."""

    @abstractmethod
    def top_probs(
        self, prompts: Sequence[list[Message]], k: int = 20, progress: Progress | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """Yield ``(index, {token: probability})`` for the top-``k`` candidates of the assistant's
        first token after each chat prompt (the logprob judge's raw material)."""

    def option_logprobs(
        self, requests: Sequence[OptionRequest], progress: Progress | None = None
    ) -> Iterator[tuple[int, OptionScores]]:
        """Yield ``(index, OptionScores)``: each option's log-probability as the continuation
        of its request's prompt (probe items). Backends that cannot score a given text do not
        override it."""
        from waluigi.errors import UserError

        raise UserError(f"model {self.spec!r} ({type(self).__name__}) cannot score answer options: probe suites "
                        "need a model that returns log-probabilities (hf:, smollm2, toy:, steered:, or an openai: "
                        "server that returns logprobs)")

    def context_length(self) -> int | None:
        """The most tokens (prompt + completion) the model takes, or None when unknown.
        ``waluigi serve`` refuses longer requests before generating."""
        return None

    def count_prompt_tokens(self, messages: list[Message]) -> int | None:
        """How many tokens the chat prompt for ``messages`` takes (chat template included),
        or None when this backend cannot tell."""
        return None

    def count_text_tokens(self, prompt: str) -> int | None:
        """How many tokens a raw-text prompt (see :meth:`generate_text`) takes, or None."""
        return None

    def generate_text(
        self, requests: Sequence[TextRequest], progress: Progress | None = None
    ) -> Iterator[tuple[int, Completion]]:
        """Like :meth:`generate` for raw-text prompts (no chat template). Optional: backends
        that only take chats do not override it, and ``waluigi serve`` then offers no
        ``/v1/completions``."""
        raise NotImplementedError(f"{type(self).__name__} does not generate from raw text")

    def identity(self) -> dict:
        """What identifies this model's outputs (spec, adapter hash, dtype ...) for run identity."""
        return {"spec": self.spec}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, sessions, GPU memory)."""
