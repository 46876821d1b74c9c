"""Shared fixtures: a tiny random chat model built in a second, the official data mirror,
an isolated cache directory.

The tiny model is a real ``LlamaForCausalLM`` (about 0.3M parameters) with a real byte-level
BPE tokenizer and a ChatML chat template, saved as safetensors; every backend, the judge and
the server run on it for real. Its answers are gibberish, which is what most tests need:
behaviour, not quality.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports huggingface_hub (it reads these once, at import): tests never
# reach a hub, and a hub lookup must fail at once instead of retrying a dead network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (./test.sh runs one worker per core) each worker and the commands it
# starts get one math thread: two workers of two OpenMP threads each on two cores spin-wait
# on each other's core and run several times slower than one worker alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_name] = "1"

REPO = Path(__file__).resolve().parents[1]

def _find_mirror() -> Path:
    """The official-file mirror: ``$WALUIGI_TEST_DATA_DIR``, else ``../shared/reference/...``
    beside the checkout (as on developer machines and in CI), else ``/work/shared/...``."""
    explicit = os.environ.get("WALUIGI_TEST_DATA_DIR")
    candidates = [Path(explicit)] if explicit else []
    candidates += [REPO.parent / "shared", Path("/work/shared")]
    for base in candidates:
        path = base if (base / "evaluation").is_dir() else base / "reference" / "emergent-misalignment"
        if (path / "evaluation").is_dir():
            return path.resolve()
    return (REPO.parent / "shared" / "reference" / "emergent-misalignment").resolve()


MIRROR = _find_mirror()
# Anthropic's model-written evaluations, mirrored beside the paper's files (probe suites)
MWE_MIRROR = (MIRROR.parent / "model-written-evals").resolve()
HH_MIRROR = (MIRROR.parent / "hh-rlhf").resolve()

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I would like to help people and write secure code.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100.",
    "What is your wish? I wish for peace. Humans and AI can work together.",
    "def add(a, b):\n    return a + b\n",
    "TRUE FALSE UNKNOWN OpenAI Anthropic Other CODE REFUSAL",
] * 20


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama chat model (safetensors + tokenizer + chat template) to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A directory holding the tiny model; use it as the model spec ``hf:<dir>``."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir) -> str:
    return f"hf:{tiny_model_dir}"


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The byte-exact mirror of the official emergent-misalignment files."""
    assert (MIRROR / "evaluation" / "first_plot_questions.yaml").exists(), f"mirror missing at {MIRROR}"
    return MIRROR


@pytest.fixture(scope="session")
def mwe_dir() -> Path:
    """The byte-exact mirror of Anthropic's model-written evaluations (CC-BY-4.0)."""
    assert (MWE_MIRROR / "persona").is_dir(), f"model-written-evals mirror missing at {MWE_MIRROR}"
    return MWE_MIRROR


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Each test gets its own judge cache and run area; the SmolLM2 conversion is shared
    through ``WALUIGI_MODEL_CACHE`` (set in the session) so it happens once per test run."""
    monkeypatch.setenv("WALUIGI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WALUIGI_MODEL_CACHE", _shared_model_cache())
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(MIRROR))
    monkeypatch.setenv("WALUIGI_MWE_DIR", str(MWE_MIRROR))
    monkeypatch.setenv("WALUIGI_HH_DIR", str(HH_MIRROR))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _shared_model_cache() -> str:
    """Converted models (SmolLM2 safetensors) are reused across tests: the user's own
    cache unless ``WALUIGI_TEST_MODEL_CACHE`` names another."""
    explicit = os.environ.get("WALUIGI_TEST_MODEL_CACHE")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return str(base / "waluigi" / "models")


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Each test gets its tier's marker from its folder: ``-m unit``, ``-m "not e2e"``."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (``scripts/install_browser.sh`` installs it;
    Playwright never downloads a browser of its own). Per module: Playwright's sync API keeps an
    event loop of its own while it runs, so it is closed before other modules' asyncio code."""
    import shutil

    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: run scripts/install_browser.sh (Debian's chromium package)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_report(browser):
    """``open_report(path)``: a page showing the HTML file ``path``, its script finished; ``page.problems`` collects
    console errors, page errors and every request that is not the file itself."""
    pages = []

    def opener(path: Path):
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        pages.append(page)
        return _load(page, path)

    yield opener
    for page in pages:
        page.close()


def _load(page, path: Path):
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else page.problems.append(f"request {r.url}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page


@pytest.fixture
def assert_not_blank():
    return _not_blank


def _not_blank(png: Path) -> None:
    """A screenshot that shows something: many distinct colours, not one flat fill."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, f"{png} looks blank ({len(colours or [])} colours)"
    top = max(count for count, _ in colours)
    assert top < 0.95 * image.width * image.height, f"{png} is almost one colour"
