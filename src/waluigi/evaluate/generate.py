"""Stage 1: sample every missing answer into ``samples.jsonl``."""

from __future__ import annotations

from waluigi.evaluate.config import EvalConfig, sample_key, sample_seed
from waluigi.evaluate.failures import closing, record_failures
from waluigi.progress import progress_bar
from waluigi.retry import RequestsFailed
from waluigi.runs import SAMPLES, RunDir


def sample_slots(question, samples: int | None = None) -> list[tuple[int, int]]:
    """The ``(paraphrase_index, sample_index)`` of every answer to ``question``.

    By default the suite's ``samples_per_paraphrase`` answers to each paraphrase. With
    ``--samples N``, N answers per question, spread over its paraphrases in turn (answer s
    goes to paraphrase s mod P), so the count per question is what the user asked for.
    """
    n_para = len(question.paraphrases)
    if samples is None:
        return [(p, s) for p in range(n_para) for s in range(question.samples_per_paraphrase)]
    return [(s % n_para, s // n_para) for s in range(samples)]


def generate_stage(run: RunDir, suite, cfg: EvalConfig, generator_factory, failed: dict | None = None,
                   shots: list[dict] | None = None) -> int:
    """Sample every missing answer; returns the number of model requests made. ``shots``:
    turns placed before every question (in-context examples, :mod:`waluigi.evaluate.shots`).

    Requests that failed after every retry are appended to ``failures.jsonl`` (after every
    answer that succeeded is on disk) and counted in ``failed["generate"]`` as
    ``(failed, sent)``; a later run samples them again."""
    from waluigi.evaluate.shots import with_shots
    from waluigi.models import GenerationRequest, SamplingParams

    done = {sample_key(r) for r in run.rows(SAMPLES)}
    todo = []
    for question in suite.questions:
        for p_index, s_index in sample_slots(question, cfg.samples):
            key = (question.id, p_index, s_index)
            if key not in done:
                todo.append((question, p_index, question.paraphrases[p_index], key))
    if not todo:
        return 0
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    requests = [
        GenerationRequest(messages=with_shots(q.messages(p), shots or []), seed=sample_seed(cfg.seed, key), params=params)
        for q, p, _, key in todo
    ]
    generator = generator_factory()
    with progress_bar(f"generate {generator.spec}", len(todo), cfg.progress) as advance, closing(generator):
        try:
            for index, completion in generator.generate(requests):
                question, p_index, paraphrase, key = todo[index]
                row = {
                    "question_id": question.id,
                    "paraphrase_index": p_index,
                    "sample_index": key[2],
                    "system": question.system,
                    "prompt": paraphrase,
                    "answer": completion.text,
                    "seed": requests[index].seed,
                    "finish_reason": completion.finish_reason,
                    "completion_tokens": completion.completion_tokens,
                }
                if shots:
                    row["shots"] = cfg.shots
                run.append(SAMPLES, [row])
                advance(1)
        except RequestsFailed as error:
            record_failures(run, "generate", [(todo[i][3], None, f) for i, f in error.failures.items()],
                            model=generator.spec)
            if failed is not None:
                failed["generate"] = (len(error.failures), len(todo))
    return len(todo)


