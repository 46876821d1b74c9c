"""The judge: :class:`Judge` scores judge requests with the model a spec names, loaded lazily
(only on a cache miss), through the :class:`~waluigi.judges.cache.JudgeCache`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from waluigi.judges.cache import JudgeCache
from waluigi.judges.reading import DEFAULT_NUMBERS, MIN_TOTAL, TOP_K, JudgeItem, JudgeResult, score_item
from waluigi.judges.specs import _judge_identity, check_numbers, normalize_judge_spec

Progress = Callable[[int], None]


class Judge:
    """Scores :class:`JudgeItem` s with a judge model, through the cache.

    ``calls`` counts the prompts actually sent to the judge model (identical prompts in one
    ``score`` call are sent once); a fully cached ``score`` makes none and loads no model.
    """

    chunk_size = 256  # prompts handed to the generator at a time (it batches them itself)

    def __init__(
        self,
        spec: str,
        cache: JudgeCache | None = None,
        generator=None,
        min_mass: float = MIN_TOTAL,
        numbers: str = DEFAULT_NUMBERS,
        **options: Any,
    ) -> None:
        self.spec = normalize_judge_spec(spec)
        self.min_mass = float(min_mass)  # the paper's 0.25 unless a weak judge needs less
        self.numbers = check_numbers(self.spec, numbers or DEFAULT_NUMBERS)
        self.options = {k: v for k, v in options.items() if v is not None}  # None = backend default
        self.identity = _judge_identity(self.spec, self.options)
        # 0_100 items read as whole numbers get their own cache entries; the default reading
        # (and categorical items, read the same way in both modes) keep the keys they always had
        self.number_identity = self.identity | ({"numbers": self.numbers} if self.numbers != DEFAULT_NUMBERS else {})
        self._cache = cache
        self._generator = generator  # an already loaded model for this spec (e.g. a model judging itself)
        self.calls = 0

    @property
    def cache(self) -> JudgeCache:
        if self._cache is None:
            self._cache = JudgeCache()
        return self._cache

    @property
    def generator(self):
        """The judge model, loaded on first use."""
        if self._generator is None:
            from waluigi.models import load_model

            self._generator = load_model(self.spec, **self.options)
        return self._generator

    def score(self, items: Sequence[JudgeItem], progress: Progress | None = None) -> Iterator[tuple[int, JudgeResult]]:
        """Yield ``(index into items, JudgeResult)``: cached ones first, then the rest as the
        judge model finishes them (each written to the cache before it is yielded).

        Items whose requests failed after every retry are not yielded: once all the others
        were, they are raised together as :class:`~waluigi.retry.RequestsFailed` (indices into
        ``items``), so the caller records them as failed and a re-run retries only them."""
        from waluigi.retry import RequestsFailed

        keys = [JudgeCache.key(self._identity_for(item), item.prompt) for item in items]
        found = self.cache.get_many(keys)
        misses: dict[str, list[int]] = {}
        for index, (item, key) in enumerate(zip(items, keys)):
            if key in found:
                yield index, JudgeResult(score_item(item, found[key], self.min_mass), found[key], cached=True)
                if progress:
                    progress(1)
            else:
                misses.setdefault(key, []).append(index)
        if not misses:
            return
        whole = [kv for kv in misses.items() if self._reads_whole(items[kv[1][0]])]
        first = [kv for kv in misses.items() if not self._reads_whole(items[kv[1][0]])]
        failed: dict = {}
        for pending, reader in ((first, self._read_first), (whole, self._read_whole)):
            yield from self._run(items, pending, reader, progress, failed)
        if failed:
            raise RequestsFailed(failed, "judge requests")

    def _reads_whole(self, item: JudgeItem) -> bool:
        return self.numbers == "whole" and item.kind == "0_100"

    def _identity_for(self, item: JudgeItem) -> dict:
        return self.number_identity if self._reads_whole(item) else self.identity

    def _read_first(self, prompts):
        return self.generator.top_probs(prompts, k=TOP_K)

    def _read_whole(self, prompts):
        return self.generator.number_probs(prompts, max_value=100)

    def _run(self, items, pending, reader, progress, failed: dict) -> Iterator[tuple[int, JudgeResult]]:
        from waluigi.retry import RequestsFailed

        for start in range(0, len(pending), self.chunk_size):
            chunk = pending[start : start + self.chunk_size]
            prompts = [[{"role": "user", "content": items[indices[0]].prompt}] for _, indices in chunk]
            self.calls += len(prompts)
            try:
                for position, top in reader(prompts):
                    key, indices = chunk[position]
                    top = {str(t): float(p) for t, p in top.items()}
                    self.cache.put(key, self.spec, top)
                    for index in indices:
                        yield index, JudgeResult(score_item(items[index], top, self.min_mass), top, cached=False)
                        if progress:
                            progress(1)
            except RequestsFailed as error:  # the rest of this chunk was yielded; go on with the next
                for position, failure in error.failures.items():
                    for index in chunk[position][1]:
                        failed[index] = failure

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None


def make_judge(spec: str, **options: Any) -> Judge:
    """The judge behind ``spec`` (see :func:`normalize_judge_spec`); ``options`` (batch_size,
    concurrency, base_url, dtype) go to :func:`waluigi.models.load_model` when it loads."""
    return Judge(spec, **options)
