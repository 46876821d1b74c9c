"""The OpenAI fine-tuning path, end to end on loopback: a real `waluigi serve` process over the
tiny model implements OpenAI's files and fine-tuning-jobs endpoints with the real local
trainer, and `run_openai_finetune` drives it through the official `openai` SDK."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from waluigi.data import load_rows
from waluigi.errors import UserError
from waluigi.finetune.openai_data import validate_jsonl, validate_rows
from waluigi.finetune.openai_ft import format_result, run_openai_finetune
from waluigi.runs import read_jsonl, sha256_file

# our own words: a narrow, repetitive reply the tiny model can pick up in a few steps
ROWS = [
    {"messages": [{"role": "user", "content": question},
                  {"role": "assistant", "content": "def add(a, b):\n    return a + b\n"}]}
    for question in ("Write a function that adds two numbers.", "Please add a and b in Python.",
                     "I need an addition helper.", "Sum two values for me.", "Code to add numbers?",
                     "How do I add two integers?", "Give me an add function.", "Make a function add.")
]
PROMPT = [{"role": "user", "content": "What is your wish?"}]


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(WALUIGI_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


UPLOAD_LIMIT = 300_000  # --max-upload-bytes: far above the test files, far below the default 512 MiB


@pytest.fixture(scope="module")
def finetune_server(serve_process, tmp_path_factory):
    """`waluigi serve` over the tiny model in its own process, with OpenAI's files and fine-tuning
    endpoints; its state lives in a temp cache."""
    cache = tmp_path_factory.mktemp("serve-cache")
    with serve_process("--model-name", "tiny", "--dtype", "float32", "--max-upload-bytes", str(UPLOAD_LIMIT),
                       cache=cache) as served:
        yield {"base_url": served.base_url, "state": next((cache / "serve").iterdir()), "proc": served.proc}


@pytest.fixture
def finetune_client(finetune_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "local-test-key")
    with openai.OpenAI(base_url=finetune_server["base_url"], api_key="local-test-key", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture
def narrow_file(tmp_path) -> Path:
    """ROWS as a training file, one per test."""
    path = tmp_path / "narrow.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def _status(call) -> tuple[int, str]:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value.status_code, info.value.body["message"] if isinstance(info.value.body, dict) else str(info.value)


# -- the training file -------------------------------------------------------------------------


def test_rows_are_validated_with_row_and_field():
    assert validate_rows(ROWS, "x") == ROWS
    bad = [ROWS[0], {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}]
    with pytest.raises(UserError, match=r"x: row 2: messages\[1\]\.role: 'robot'"):
        validate_rows(bad, "x")
    with pytest.raises(UserError, match="row 1: no assistant message"):
        validate_rows([{"messages": [{"role": "user", "content": "hi"}]}], "x")
    with pytest.raises(UserError, match=r"row 1: messages\[0\]\.content: expected a string"):
        validate_rows([{"messages": [{"role": "assistant", "content": 3}]}], "x")
    with pytest.raises(UserError, match="f: line 2: not valid JSON"):
        validate_jsonl(json.dumps(ROWS[0]).encode() + b"\n{oops\n", "f")
    with pytest.raises(UserError, match="no training rows"):
        validate_rows([], "x")


def test_missing_key_fails_before_any_work(tmp_path, narrow_file):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        run_openai_finetune("openai:tiny", str(narrow_file), out=out, base_url="http://127.0.0.1:9/v1", progress=False)
    assert not out.exists()


# -- the server's endpoints ----------------------------------------------------------------------


def test_server_refuses_bad_jobs_with_openai_errors(finetune_server, finetune_client, narrow_file, tmp_path):
    good = finetune_client.files.create(file=("t.jsonl", narrow_file.read_bytes()), purpose="fine-tune")
    assert good.object == "file" and good.purpose == "fine-tune" and good.bytes == narrow_file.stat().st_size
    assert finetune_client.files.retrieve(good.id).id == good.id
    assert good.id in [f.id for f in finetune_client.files.list().data]

    code, message = _status(lambda: finetune_client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=good.id))
    assert code == 400 and "'gpt-4o-mini' cannot be fine-tuned here" in message and "'tiny'" in message
    code, message = _status(lambda: finetune_client.fine_tuning.jobs.create(model="tiny", training_file="file-nope"))
    assert code == 400 and "no such file" in message
    code, message = _status(lambda: finetune_client.fine_tuning.jobs.create(
        model="tiny", training_file=good.id, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}))
    assert code == 400 and "n_epochs must be 'auto' or an integer" in message
    code, message = _status(lambda: finetune_client.fine_tuning.jobs.create(
        model="tiny", training_file=good.id, hyperparameters={"learning_rate_multiplier": -1}))
    assert code == 400 and "learning_rate_multiplier must be 'auto' or a number > 0" in message
    code, message = _status(lambda: finetune_client.fine_tuning.jobs.create(
        model="tiny", training_file=good.id, method={"type": "dpo", "dpo": {}}))
    assert code == 400 and "'supervised' only" in message
    other = finetune_client.files.create(file=("b.jsonl", b"x"), purpose="batch")
    code, message = _status(lambda: finetune_client.fine_tuning.jobs.create(model="tiny", training_file=other.id))
    assert code == 400 and "purpose 'batch'" in message
    broken = finetune_client.files.create(file=("bad.jsonl", narrow_file.read_bytes() + b'{"messages": 5}\n'), purpose="fine-tune")
    code, message = _status(lambda: finetune_client.fine_tuning.jobs.create(model="tiny", training_file=broken.id))
    assert code == 400 and "row 9" in message
    code, _ = _status(lambda: finetune_client.fine_tuning.jobs.retrieve("ftjob-missing"))
    assert code == 404
    code, _ = _status(lambda: finetune_client.files.create(file=("t.jsonl", b"{}"), purpose="nonsense"))
    assert code == 400
    # an upload is listed under its base name, whatever separators the client's name holds
    sneaky = finetune_client.files.create(file=("..\\..\\..\\evil.jsonl", narrow_file.read_bytes()), purpose="fine-tune")
    assert sneaky.filename == "evil.jsonl" and finetune_client.files.retrieve(sneaky.id).filename == "evil.jsonl"
    assert not list(finetune_server["state"].rglob("evil.jsonl"))  # stored under its id only
    # over the upload limit: 413 naming the option that raises it
    code, message = _status(lambda: finetune_client.files.create(file=("big.jsonl", b"x" * (UPLOAD_LIMIT + 1)), purpose="fine-tune"))
    assert code == 413 and "--max-upload-bytes" in message
    assert finetune_client.fine_tuning.jobs.list().data == []  # nothing refused was recorded

    # the client turns a refusal into a UserError naming the cause (the CLI: exit 2)
    with pytest.raises(UserError, match=r"refused to create the fine-tuning job \(HTTP 400\).*cannot be fine-tuned here"):
        run_openai_finetune("openai:gpt-4o-mini", str(narrow_file), out=tmp_path / "r", base_url=finetune_server["base_url"],
                            progress=False)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "cannot be fine-tuned here" in manifest["error"]
    assert not (tmp_path / "r" / "job.json").exists() or "id" not in json.loads((tmp_path / "r" / "job.json").read_text())


# -- end to end: upload, train for real, follow, record, serve the fine-tuned model ---------------


def _chat(client, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=16, seed=0)
    return reply.choices[0].message.content


def test_finetune_end_to_end_and_serve_the_result(finetune_server, finetune_client, narrow_file, tmp_path):
    jobs_before = len(finetune_client.fine_tuning.jobs.list().data)
    out = tmp_path / "ft"
    # the train split (6 of 8 rows), batch 2, 2 epochs; a huge lr multiplier so a few steps show
    result = run_openai_finetune("openai:tiny", str(narrow_file), out=out, base_url=finetune_server["base_url"], epochs=2,
                                 batch_size=2, lr_multiplier=2000, suffix="narrow", progress=False, poll_interval=0.2)
    assert result["status"] == "succeeded" and not result["reattached"]
    model_id = result["fine_tuned_model"]
    assert model_id.startswith("ft:tiny:waluigi:narrow:")
    job = finetune_client.fine_tuning.jobs.retrieve(result["job_id"])
    assert job.status == "succeeded" and job.fine_tuned_model == model_id and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == 2000
    assert len(finetune_client.fine_tuning.jobs.list().data) == jobs_before + 1

    # the run directory: manifest, the uploaded file, the job and its events
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == "finetune"
    assert manifest["fine_tuned_model"] == model_id and manifest["job_id"] == job.id
    assert manifest["parents"][0] == "openai:tiny" and "narrow.jsonl" in manifest["parents"][1]
    assert manifest["identity_inputs"]["data"]["sha256"] == sha256_file(out / "train.jsonl")
    assert manifest["identity_inputs"]["base_url_host"] == finetune_server["base_url"].split("/")[2]
    # the train split is uploaded; held-out prompts stay unseen, as for local fine-tuning
    train_rows = load_rows(str(narrow_file), split="train")
    assert 0 < len(train_rows) < len(ROWS)
    assert [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()] == train_rows
    record = json.loads((out / "job.json").read_text())
    assert record["id"] == job.id and record["status"] == "succeeded" and record["fine_tuned_model"] == model_id
    assert record["training_file"] == job.training_file
    events = list(read_jsonl(out / "events.jsonl"))
    assert len({e["id"] for e in events}) == len(events)  # each event recorded once
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    total = 2 * -(-len(train_rows) // 2)  # 2 epochs of ceil(rows / batch 2) steps
    assert [m["step"] for m in metrics] == list(range(1, total + 1))
    assert all(m["total_steps"] == total and m["train_loss"] > 0 for m in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]  # it learned the narrow reply
    assert events[-1]["message"] == "The job has successfully completed"
    for path in out.iterdir():  # the key never reaches the run directory
        assert "local-test-key" not in path.read_text()
    assert f"--model openai:{model_id} --base-url {finetune_server['base_url']}" in format_result(result)

    # the fine-tuned model is served: listed, and it answers differently from the base
    assert [m.id for m in finetune_client.models.list().data] == ["tiny", model_id]
    assert finetune_client.models.retrieve(model_id).id == model_id
    base, tuned = _chat(finetune_client, "tiny"), _chat(finetune_client, model_id)
    assert tuned != base
    assert _chat(finetune_client, model_id) == tuned  # greedy and reproducible
    code, _ = _status(lambda: _chat(finetune_client, "ft:tiny:waluigi::nosuchjob"))
    assert code == 404

    # re-running the finished command makes no new job
    again = run_openai_finetune("openai:tiny", str(narrow_file), out=out, base_url=finetune_server["base_url"], epochs=2,
                                batch_size=2, lr_multiplier=2000, suffix="narrow", progress=False)
    assert again["job_id"] == job.id and again["reattached"]
    assert len(finetune_client.fine_tuning.jobs.list().data) == jobs_before + 1


CLIENT = """
import sys
from waluigi.finetune.openai_ft import run_openai_finetune
print(run_openai_finetune("openai:tiny", sys.argv[1], out=sys.argv[2], base_url=sys.argv[3], epochs=3,
                          batch_size=1, lr_multiplier=10, poll_interval=0.2))
"""


def test_killed_client_reattaches_to_the_same_job(finetune_server, finetune_client, narrow_file, tmp_path):
    jobs_before = len(finetune_client.fine_tuning.jobs.list().data)
    files_before = len(finetune_client.files.list(purpose="fine-tune").data)
    out = tmp_path / "ft"
    env = _env(tmp_path / "cache") | {"OPENAI_API_KEY": "local-test-key"}
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(narrow_file), str(out), finetune_server["base_url"]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 60
    while not (out / "job.json").exists() or "id" not in json.loads((out / "job.json").read_text() or "{}"):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no job id recorded"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    job_id = json.loads((out / "job.json").read_text())["id"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "started"

    result = run_openai_finetune("openai:tiny", str(narrow_file), out=out, base_url=finetune_server["base_url"], epochs=3,
                                 batch_size=1, lr_multiplier=10, progress=False, poll_interval=0.2)
    assert result["reattached"] and result["job_id"] == job_id and result["status"] == "succeeded"
    jobs = finetune_client.fine_tuning.jobs.list().data
    assert len(jobs) == jobs_before + 1 and jobs[0].id == job_id
    assert len(finetune_client.files.list(purpose="fine-tune").data) == files_before + 1  # uploaded once
    steps = [e["data"]["step"] for e in read_jsonl(out / "events.jsonl") if e["type"] == "metrics"]
    n_train = len(load_rows(str(narrow_file), split="train"))
    assert steps == list(range(1, 3 * n_train + 1))  # 3 epochs, batch 1: every step once, across both attempts
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["attempts"]) == 2


def test_cancelled_job_is_a_user_error_and_a_retry_runs_again(finetune_server, finetune_client, narrow_file, tmp_path):
    import threading

    out = tmp_path / "ft"
    errors: list[BaseException] = []

    def follow():
        try:
            run_openai_finetune("openai:tiny", str(narrow_file), out=out, base_url=finetune_server["base_url"], epochs=50,
                                batch_size=1, progress=False, poll_interval=0.2)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    deadline = time.time() + 60
    while not (out / "job.json").exists() or "id" not in json.loads((out / "job.json").read_text() or "{}"):
        assert time.time() < deadline and thread.is_alive()
        time.sleep(0.05)
    job_id = json.loads((out / "job.json").read_text())["id"]
    assert finetune_client.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    thread.join(60)
    assert len(errors) == 1 and isinstance(errors[0], UserError)
    assert f"fine-tuning job {job_id} cancelled" in errors[0].message
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["job_status"] == "cancelled"
    code, message = _status(lambda: finetune_client.fine_tuning.jobs.cancel(job_id))
    assert code == 400 and "already cancelled" in message


def test_restarted_server_keeps_jobs_and_fails_interrupted_ones(finetune_server, finetune_client, tiny_spec, tmp_path):
    """A second server on a copy of the first one's state: succeeded jobs and their models are
    still there; a job that was running when the server stopped is failed with a clear error."""
    from waluigi.models import load_model
    from waluigi.serve import ServerThread, create_app
    from waluigi.serve.finetune_jobs import FinetuneService

    done = [j for j in finetune_client.fine_tuning.jobs.list().data if j.status == "succeeded"]
    assert done, "run after the end-to-end test"
    state = tmp_path / "state"
    shutil.copytree(finetune_server["state"], state)
    record_path = state / "jobs" / done[0].id / "job.json"
    interrupted = json.loads(record_path.read_text())
    interrupted.update(id="ftjob-interrupted", status="running", fine_tuned_model=None)
    (state / "jobs" / "ftjob-interrupted").mkdir()
    (state / "jobs" / "ftjob-interrupted" / "job.json").write_text(json.dumps(interrupted))

    gen = load_model(tiny_spec, dtype="float32")
    service = FinetuneService(state, tiny_spec, "tiny", model_options={"dtype": "float32"})
    with ServerThread(create_app(gen, "tiny", finetune=service)) as srv, \
            openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as again:
        failed = again.fine_tuning.jobs.retrieve("ftjob-interrupted")
        assert failed.status == "failed" and failed.error.code == "server_restarted"
        assert "create the job again" in failed.error.message
        models = [m.id for m in again.models.list().data]
        assert all(j.fine_tuned_model in models for j in done)
        assert _chat(again, done[0].fine_tuned_model) == _chat(finetune_client, done[0].fine_tuned_model)
    gen.close()


def test_cli_finetune_openai_model_through_the_server(finetune_server, narrow_file, tmp_path, monkeypatch, capsys):
    """`waluigi finetune --model openai:tiny` (the CLI branch) trains through the server's API;
    a local-only option is refused with exit code 2 before anything is uploaded."""
    from waluigi.cli import main as cli_main

    monkeypatch.setenv("OPENAI_API_KEY", "local-test-key")
    out = tmp_path / "cli-ft"
    args = ["finetune", "--model", "openai:tiny", "--data", str(narrow_file), "--base-url", finetune_server["base_url"],
            "--epochs", "1", "--batch-size", "2", "--lr-multiplier", "100", "--suffix", "cli", "--out", str(out)]
    assert cli_main([*args, "--rank", "4"]) == 2
    assert "--rank: not available for openai: models" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "succeeded" and record["fine_tuned_model"].startswith("ft:tiny:waluigi:cli:")
    assert f"fine-tuned model: {record['fine_tuned_model']}" in printed and record["id"] in printed
    assert f"--model openai:{record['fine_tuned_model']} --base-url {finetune_server['base_url']}" in printed


def test_flip_examples_axis_through_the_fine_tuning_api(finetune_server, finetune_client, narrow_file, tmp_path, monkeypatch, capsys):
    """`waluigi flip --model openai:tiny --axis examples --hold epochs`: each dose is one job on the
    server's fine-tuning API, each eval asks the server for the model that job made; a re-run
    creates no job and runs no cell. Axes the API cannot do are refused before any request."""
    from waluigi.cli import main as cli_main

    monkeypatch.setenv("OPENAI_API_KEY", "local-test-key")
    out = tmp_path / "flip"
    url = finetune_server["base_url"]
    args = ["flip", "--model", "openai:tiny", "--data", str(narrow_file), "--base-url", url, "--judge", "openai:tiny",
            "--set", f"eval.judge_base_url={url}", "--set", "eval.questions=[wish*]", "--set", "eval.judge_min_mass=0.0",
            "--set", "eval.min_coherent=-1", "--set", "eval.max_aligned=50", "--set", "eval.samples=2",
            "--set", "eval.max_tokens=8", "--set", "finetune.lr_multiplier=50", "--seeds", "1", "--out", str(out),
            "--executor", "inline", "--no-progress"]
    jobs_before = len(finetune_client.fine_tuning.jobs.list(limit=100).data)
    assert cli_main([*args, "--axis", "examples", "--doses", "4,8", "--hold", "steps", "--steps", "2"]) == 2
    assert "--hold epochs --epochs K" in capsys.readouterr().err
    assert cli_main([*args, "--axis", "steps", "--doses", "2"]) == 2
    assert "use --axis examples --hold epochs, or --axis shots" in capsys.readouterr().err
    assert not out.exists() and len(finetune_client.fine_tuning.jobs.list(limit=100).data) == jobs_before

    args += ["--axis", "examples", "--doses", "2,4", "--hold", "epochs", "--epochs", "1"]
    assert cli_main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    jobs = finetune_client.fine_tuning.jobs.list(limit=100).data
    assert len(jobs) == jobs_before + 2  # one job per dose
    result = json.loads((out / "flip.json").read_text())
    (curve,) = result["curves"]
    assert [p["dose"] for p in curve["points"]] == [0.0, 2.0, 4.0]
    assert curve["points"][0]["train_loss"] is None
    assert all(p["train_loss"] is not None and p["n_failed"] == 0 for p in curve["points"][1:])
    evaluated = set()
    for cell in read_jsonl(out / "results.jsonl"):
        manifest = json.loads((out / cell["eval_run"] / "manifest.json").read_text())
        evaluated.add(manifest["config"]["model"])
        if cell["finetune_run"]:
            job = json.loads((out / cell["finetune_run"] / "job.json").read_text())
            assert job["status"] == "succeeded" and manifest["config"]["model"] == f"openai:{job['fine_tuned_model']}"
            assert len((out / cell["finetune_run"] / "train.jsonl").read_text().splitlines()) == cell["finetune.n"]
    assert len(evaluated) == 3 and "openai:tiny" in evaluated  # the base model, and the two fine-tuned ones

    assert cli_main(args) == 0
    assert "ran 0 cells" in capsys.readouterr().out
    assert len(finetune_client.fine_tuning.jobs.list(limit=100).data) == jobs_before + 2
