"""A user's own mistakes, over every command: each is refused with one line that names what was wrong, a
non-zero exit and no traceback, and no patient text in what is printed.

Each row is (name, arguments, files to write first, text the message must contain). `{d}` in an argument or a
file name is the test's folder. Transcripts in the files carry MARKER: no 12-character run of them may appear in
what the command prints. Nothing here loads a model or opens a connection: every input is refused first (an
address off this machine is refused before anything is sent).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.data.sample import generate_samples

MARKER = "Zyxwvutsrq"
VISIT = f"RD: Good morning Mr {MARKER}, your potassium is 6.1. Patient: I eat {MARKER} bananas daily."
OTHER = f"RD: Hello Mrs {MARKER}ova, how is the diet? Patient: {MARKER}ova finds it hard to cook."

GARBAGE_GGUF = b"GGUF" + b"\xff" * 60
LABELLED = [{"id": f"visit-{i}", **record} for i, record in enumerate(generate_samples(4, seed=3))]
TRAINING_CSV_NO_HEADER = f'"{VISIT}",4,4,4,4\n"{OTHER}",3,3,3,3\n'


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def labelled_with(**changes: object) -> str:
    return jsonl(*({**record, **changes} if i == 1 else record for i, record in enumerate(LABELLED)))


def results_of_other_texts() -> str:
    """An hcp batch results file whose ids are the labelled set's, but whose transcripts were other texts."""
    records = []
    for record in LABELLED:
        records.append({"id": record["id"], "status": "ok", "transcript_sha256": "0" * 64, "model": "m",
                        "seed": 42, **dict.fromkeys(("empathy", "clarity", "accuracy", "professionalism"), 3)})
    return jsonl(*records)


MANIFEST = {"gguf": {"file": "r.Q8_0.gguf"}, "name": "r"}
REGISTRY = {"reg/r/1/manifest.json": json.dumps({**MANIFEST, "version": 1}),
            "reg/r/2/manifest.json": json.dumps({**MANIFEST, "version": 2}),
            "reg/r/history.json": json.dumps([{"action": "promote", "version": 1, "previous": None}])}

CASES = [
    # rubric and config
    ("config-missing", ["rubric", "--config", "{d}/nope.yaml"], {}, "nope.yaml"),
    ("config-not-yaml", ["rubric", "--config", "{d}/c.yaml"], {"c.yaml": "model: [unclosed\n"}, "c.yaml"),
    ("config-unknown-key", ["rubric", "--config", "{d}/c.yaml"], {"c.yaml": "modle:\n  name: x\n"}, "modle"),
    ("config-negative-weight", ["rubric", "--config", "{d}/c.yaml"],
     {"c.yaml": "scoring:\n  dimensions:\n    empathy:\n      weight: -1\n      description: x\n"}, "weight"),
    ("config-reserved-dimension", ["rubric", "--config", "{d}/c.yaml"],
     {"c.yaml": "scoring:\n  dimensions:\n    status:\n      weight: 1\n      description: how it went\n"},
     "status"),
    ("config-dimension-named-seed", ["rubric", "--config", "{d}/c.yaml"],
     {"c.yaml": "scoring:\n  dimensions:\n    seed:\n      weight: 1\n      description: x\n"}, "seed"),
    # data validate
    ("validate-missing", ["data", "validate", "{d}/none.jsonl"], {}, "none.jsonl"),
    ("validate-folder", ["data", "validate", "{d}"], {}, ""),
    ("validate-binary", ["data", "validate", "{d}/b.jsonl"], {"b.jsonl": b"\x00\x01\xff\xfe" * 10}, "b.jsonl"),
    ("validate-broken-json", ["data", "validate", "{d}/t.jsonl"],
     {"t.jsonl": '{"transcript": "' + VISIT + '", "empathy": 4\n'}, "t.jsonl"),
    ("validate-csv-no-header", ["data", "validate", "{d}/t.csv"], {"t.csv": TRAINING_CSV_NO_HEADER}, "t.csv"),
    ("validate-duplicate-ids", ["data", "validate", "{d}/t.jsonl"],
     {"t.jsonl": labelled_with(id=LABELLED[0]["id"])}, "t.jsonl"),
    ("validate-empty", ["data", "validate", "{d}/e.jsonl"], {"e.jsonl": ""}, "e.jsonl"),
    ("validate-score-out-of-range", ["data", "validate", "{d}/t.jsonl"],
     {"t.jsonl": labelled_with(empathy=7)}, "t.jsonl"),
    # data sample and split
    ("sample-zero", ["data", "sample", "--n", "0", "--out", "{d}/s.jsonl"], {}, "--n"),
    ("sample-out-is-folder", ["data", "sample", "--n", "2", "--out", "{d}"], {}, ""),
    ("sample-other-rubric", ["data", "sample", "--n", "2", "--out", "{d}/s.jsonl", "--config", "{d}/c.yaml"],
     {"c.yaml": "scoring:\n  dimensions:\n    warmth:\n      weight: 1\n      description: x\n"}, "rubric"),
    ("split-share-above-one", ["data", "split", "{d}/t.jsonl", "--val", "1.5"], {"t.jsonl": jsonl(*LABELLED)},
     "1.5"),
    ("split-negative-share", ["data", "split", "{d}/t.jsonl", "--val", "-0.1"], {"t.jsonl": jsonl(*LABELLED)},
     "-0.1"),
    ("split-invalid-records", ["data", "split", "{d}/t.jsonl"], {"t.jsonl": labelled_with(clarity="high")},
     "t.jsonl"),
    # data agreement and consensus: several annotators' files
    ("agreement-one-annotator", ["data", "agreement", "{d}/alice.jsonl"], {"alice.jsonl": jsonl(*LABELLED)},
     "annotator"),
    ("agreement-file-missing", ["data", "agreement", "{d}/alice.jsonl", "{d}/bob.jsonl"],
     {"alice.jsonl": jsonl(*LABELLED)}, "bob.jsonl"),
    ("agreement-same-names", ["data", "agreement", "{d}/x/alice.jsonl", "{d}/y/alice.jsonl"],
     {"x/alice.jsonl": jsonl(*LABELLED), "y/alice.jsonl": jsonl(*LABELLED)}, "alice"),
    ("agreement-id-two-texts", ["data", "agreement", "{d}/alice.jsonl", "{d}/bob.jsonl"],
     {"alice.jsonl": jsonl({**LABELLED[0], "transcript": VISIT}),
      "bob.jsonl": jsonl({**LABELLED[0], "transcript": OTHER})}, "visit-0"),
    ("agreement-score-out-of-range", ["data", "agreement", "{d}/alice.jsonl", "{d}/bob.jsonl"],
     {"alice.jsonl": labelled_with(empathy=9), "bob.jsonl": jsonl(*LABELLED)}, "alice.jsonl"),
    ("consensus-over-an-input", ["data", "consensus", "{d}/alice.jsonl", "{d}/bob.jsonl", "--out",
                                 "{d}/alice.jsonl"],
     {"alice.jsonl": jsonl(*LABELLED), "bob.jsonl": jsonl(*LABELLED)}, "alice.jsonl"),
    ("consensus-no-out", ["data", "consensus", "{d}/alice.jsonl", "{d}/bob.jsonl"],
     {"alice.jsonl": jsonl(*LABELLED), "bob.jsonl": jsonl(*LABELLED)}, "--out"),
    # score
    ("score-nothing", ["score"], {}, "--file"),
    ("score-file-missing", ["score", "--file", "{d}/visit.txt"], {}, "visit.txt"),
    ("score-file-is-folder", ["score", "--file", "{d}"], {}, ""),
    ("score-empty-file", ["score", "--file", "{d}/v.txt"], {"v.txt": ""}, "v.txt"),
    ("score-binary-file", ["score", "--file", "{d}/v.txt"], {"v.txt": b"\xff\xfe\x00\x00" * 8}, "v.txt"),
    ("score-gguf-garbage", ["score", VISIT, "--backend", "llama-cpp", "--model", "{d}/m.gguf"],
     {"m.gguf": GARBAGE_GGUF}, "m.gguf"),
    ("score-gguf-missing", ["score", VISIT, "--backend", "llama-cpp", "--model", "{d}/m.gguf"], {}, "m.gguf"),
    ("score-not-a-gguf", ["score", VISIT, "--backend", "llama-cpp", "--model", "{d}/m.gguf"],
     {"m.gguf": "just text"}, "m.gguf"),
    ("score-seed-negative", ["score", VISIT, "--seed", "-1"], {}, "--seed"),
    ("score-seed-too-large", ["score", VISIT, "--seed", str(2**32)], {}, "--seed"),
    ("score-seed-not-a-number", ["score", VISIT, "--seed", "abc"], {}, "--seed"),
    ("score-openai-no-url", ["score", VISIT, "--backend", "openai"], {}, "--base-url"),
    ("score-openai-password", ["score", VISIT, "--backend", "openai", "--base-url",
                               "http://alice:s3cretpw@127.0.0.1:9/v1"], {}, "password"),
    ("score-openai-trailing-dot", ["score", VISIT, "--backend", "openai", "--base-url", "http://localhost.:9/v1"],
     {}, "localhost."),
    ("score-openai-not-http", ["score", VISIT, "--backend", "openai", "--base-url", "ftp://127.0.0.1/v1"], {},
     "ftp"),
    ("score-openai-remote", ["score", VISIT, "--backend", "openai", "--base-url", "http://rater.invalid:8000/v1"],
     {}, "--allow-remote"),
    ("score-ollama-remote", ["score", VISIT, "--backend", "ollama", "--host", "rater.invalid"], {},
     "--allow-remote"),
    ("score-ollama-bad-host", ["score", VISIT, "--backend", "ollama", "--host", "http://[::1"], {}, "--host"),
    ("score-num-ctx-small", ["score", VISIT, "--num-ctx", "100"], {}, "--num-ctx"),
    ("score-threads-zero", ["score", VISIT, "--threads", "0"], {}, "--threads"),
    ("score-timeout-zero", ["score", VISIT, "--timeout", "0"], {}, "--timeout"),
    ("score-unknown-backend", ["score", VISIT, "--backend", "vllm"], {}, "--backend"),
    # merge and export
    ("merge-missing", ["merge", "{d}/adapter", "--output", "{d}/out"], {}, "adapter"),
    ("merge-config-not-json", ["merge", "{d}/adapter", "--output", "{d}/out"],
     {"adapter/adapter_config.json": "{not json", "adapter/adapter_model.safetensors": b"\x00" * 16},
     "adapter_config.json"),
    ("merge-empty-folder", ["merge", "{d}/adapter", "--output", "{d}/out"], {"adapter/readme.txt": "x"},
     "adapter"),
    ("export-missing", ["export-ollama", "{d}/model", "--no-create"], {}, "model"),
    ("export-empty-folder", ["export-ollama", "{d}/model", "--no-create"], {"model/readme.txt": "x"}, "model"),
    ("export-unknown-quant", ["export-ollama", "{d}/model", "--quant", "q3_k"], {"model/readme.txt": "x"},
     "--quant"),
    ("export-no-parity-transcripts", ["export-ollama", "{d}/model", "--parity-transcripts", "0"],
     {"model/readme.txt": "x"}, "--parity-transcripts"),
    ("export-negative-parity-transcripts", ["export-ollama", "{d}/model", "--parity-transcripts", "-3"],
     {"model/readme.txt": "x"}, "--parity-transcripts"),
    ("export-auto-without-parity", ["export-ollama", "{d}/model", "--quant", "auto", "--no-parity-check"],
     {"model/readme.txt": "x"}, "--no-parity-check"),
    ("export-remote-daemon", ["export-ollama", "{d}/adapter", "--host", "rater.invalid"],
     {"adapter/adapter_config.json": "{not json"}, ""),
    # batch
    ("batch-input-missing", ["batch", "{d}/visits.csv", "--out", "{d}/r.jsonl"], {}, "visits.csv"),
    ("batch-csv-no-transcript-column", ["batch", "{d}/visits.csv", "--out", "{d}/r.jsonl"],
     {"visits.csv": f"id,text\n1,\"{VISIT}\"\n"}, "transcript"),
    ("batch-csv-no-header", ["batch", "{d}/visits.csv", "--out", "{d}/r.jsonl"],
     {"visits.csv": f"1,\"{VISIT}\"\n2,\"{OTHER}\"\n"}, "visits.csv"),
    ("batch-broken-jsonl", ["batch", "{d}/visits.jsonl", "--out", "{d}/r.jsonl"],
     {"visits.jsonl": '{"transcript": "' + VISIT + '"\n'}, "visits.jsonl"),
    ("batch-empty-input", ["batch", "{d}/visits.jsonl", "--out", "{d}/r.jsonl"], {"visits.jsonl": ""},
     "visits.jsonl"),
    ("batch-out-is-users-file", ["batch", "{d}/visits.jsonl", "--out", "{d}/notes.jsonl"],
     {"visits.jsonl": jsonl({"id": "a", "transcript": VISIT}),
      "notes.jsonl": '{"note": "call back"}\n{"note": "unfinished'}, "notes.jsonl"),
    ("batch-parallel-zero", ["batch", "{d}/visits.jsonl", "--out", "{d}/r.jsonl", "--parallel", "0"],
     {"visits.jsonl": jsonl({"id": "a", "transcript": VISIT})}, "--parallel"),
    ("batch-folder-without-transcripts", ["batch", "{d}/visits", "--out", "{d}/r.jsonl"],
     {"visits/notes.md": VISIT}, "visits"),
    # evaluate
    ("evaluate-data-missing", ["evaluate", "--data", "{d}/l.jsonl", "--report", "{d}/rep"], {}, "l.jsonl"),
    ("evaluate-runs-zero", ["evaluate", "--data", "{d}/l.jsonl", "--runs", "0"], {"l.jsonl": jsonl(*LABELLED)},
     "--runs"),
    ("evaluate-predictions-of-other-texts",
     ["evaluate", "--data", "{d}/l.jsonl", "--predictions", "{d}/p.jsonl", "--report", "{d}/rep"],
     {"l.jsonl": jsonl(*LABELLED), "p.jsonl": results_of_other_texts()}, "transcript"),
    ("evaluate-predictions-not-results",
     ["evaluate", "--data", "{d}/l.jsonl", "--predictions", "{d}/p.jsonl", "--report", "{d}/rep"],
     {"l.jsonl": jsonl(*LABELLED), "p.jsonl": '{"note": "x"}\n'}, "p.jsonl"),
    ("evaluate-unlabelled", ["evaluate", "--data", "{d}/l.jsonl", "--report", "{d}/rep"],
     {"l.jsonl": jsonl({"id": "a", "transcript": VISIT})}, "l.jsonl"),
    ("evaluate-target-above-one", ["evaluate", "--data", "{d}/l.jsonl", "--target-agreement", "1.5"],
     {"l.jsonl": jsonl(*LABELLED)}, "--target-agreement"),
    ("evaluate-target-zero", ["evaluate", "--data", "{d}/l.jsonl", "--target-agreement", "0"],
     {"l.jsonl": jsonl(*LABELLED)}, "--target-agreement"),
    ("evaluate-risk-one", ["evaluate", "--data", "{d}/l.jsonl", "--target-agreement", "0.9", "--risk", "1"],
     {"l.jsonl": jsonl(*LABELLED)}, "--risk"),
    ("evaluate-write-config-onto-the-config",
     ["evaluate", "--data", "{d}/l.jsonl", "--target-agreement", "0.9", "--config", "{d}/c.yaml",
      "--write-config", "{d}/c.yaml"], {"l.jsonl": jsonl(*LABELLED), "c.yaml": "model:\n  temperature: 0.0\n"},
     "one of the inputs"),
    ("evaluate-write-config-onto-the-labels",
     ["evaluate", "--data", "{d}/l.jsonl", "--target-agreement", "0.9", "--write-config", "{d}/l.jsonl"],
     {"l.jsonl": jsonl(*LABELLED)}, "one of the inputs"),
    ("evaluate-write-config-unwritable",
     ["evaluate", "--data", "{d}/l.jsonl", "--target-agreement", "0.9", "--write-config", "{d}/blocker/c.yaml"],
     {"l.jsonl": jsonl(*LABELLED), "blocker": "a file where a folder should be"}, "blocker"),
    ("evaluate-write-config-without-target",
     ["evaluate", "--data", "{d}/l.jsonl", "--write-config", "{d}/c.yaml"], {"l.jsonl": jsonl(*LABELLED)},
     "--target-agreement"),
    ("evaluate-annotators-share-no-transcript",
     ["evaluate", "--data", "{d}/alice.jsonl", "--data", "{d}/bob.jsonl", "--report", "{d}/rep"],
     {"alice.jsonl": jsonl(*LABELLED[:2]), "bob.jsonl": jsonl(*LABELLED[2:])}, "two or more annotators"),
    # serve (refused before any model loads)
    ("serve-public-without-token", ["serve", "--host", "0.0.0.0"], {}, "token"),
    ("serve-port-out-of-range", ["serve", "--port", "70000"], {}, "--port"),
    ("serve-body-limit-zero", ["serve", "--max-body-mb", "0"], {}, "--max-body-mb"),
    ("serve-reviews-cannot-be-created", ["serve", "--reviews", "{d}/blocker/reviews.jsonl"],
     {"blocker": "a file where a folder should be"}, "blocker"),
    ("serve-canary-share-over-one", ["serve", "--canary", "{d}/b.gguf", "--canary-share", "1.5"], {},
     "--canary-share 1.5"),
    ("serve-canary-share-negative", ["serve", "--canary", "{d}/b.gguf", "--canary-share", "-0.1"], {},
     "--canary-share -0.1"),
    ("serve-canary-share-without-canary", ["serve", "--canary-share", "0.2"], {}, "goes with --canary"),
    ("serve-canary-is-the-model", ["serve", "--model", "{d}/a.gguf", "--canary", "{d}/a.gguf"], {},
     "is the --model version"),
    ("serve-shadow-is-the-canary", ["serve", "--canary", "{d}/b.gguf", "--shadow", "{d}/b.gguf"], {},
     "is the --canary version"),
    ("serve-canary-cannot-be-opened", ["serve", "--canary", "{d}/missing.gguf"], {}, "given to --canary"),
    ("serve-canary-not-a-gguf", ["serve", "--canary", "{d}/b.gguf"], {"b.gguf": GARBAGE_GGUF}, "b.gguf"),
    ("serve-shadow-cannot-be-opened", ["serve", "--shadow", "{d}/gone.gguf"], {}, "given to --shadow"),
    ("serve-reviewers-missing", ["serve", "--reviewers", "{d}/team.reviewers"], {}, "team.reviewers"),
    ("serve-reviewers-malformed-line", ["serve", "--reviewers", "{d}/team.reviewers"],
     {"team.reviewers": "# the team\nalice\n"}, "team.reviewers:2"),
    ("serve-random-share-out-of-range", ["serve", "--random-share", "1.5"], {}, "1.5 is not in the range 0<=x<=1"),
    ("serve-queue-from-missing", ["serve", "--queue-from", "{d}/r.jsonl", "--queue-input", "{d}/v.jsonl"],
     {"v.jsonl": jsonl({"id": "a", "transcript": VISIT})}, "r.jsonl"),
    ("serve-queue-from-not-results", ["serve", "--queue-from", "{d}/r.jsonl", "--queue-input", "{d}/v.jsonl"],
     {"r.jsonl": jsonl({"transcript": VISIT}), "v.jsonl": jsonl({"id": "a", "transcript": VISIT})}, "r.jsonl"),
    ("serve-queue-from-without-input", ["serve", "--queue-from", "{d}/r.jsonl"], {"r.jsonl": "{}\n"},
     "--queue-input"),
    ("serve-add-reviewer-bad-name", ["serve", "add-reviewer", "../alice", "--reviewers", "{d}/t.reviewers"], {},
     "reviewer name"),
    ("serve-add-reviewer-twice", ["serve", "add-reviewer", "alice", "--reviewers", "{d}/t.reviewers"],
     {"t.reviewers": "alice scrypt$16384$8$1$c2FsdA$aGFzaA\n"}, "--replace"),
    # train (refused before any model loads)
    ("train-data-missing", ["train", "--data", "{d}/t.jsonl", "--output", "{d}/m"], {}, "t.jsonl"),
    ("train-val-is-data", ["train", "--data", "{d}/t.jsonl", "--val", "{d}/t.jsonl", "--output", "{d}/m"],
     {"t.jsonl": jsonl(*LABELLED)}, "t.jsonl"),
    ("train-val-and-fraction", ["train", "--data", "{d}/t.jsonl", "--val", "{d}/v.jsonl", "--val-fraction", "0.1",
                                "--output", "{d}/m"], {"t.jsonl": jsonl(*LABELLED), "v.jsonl": jsonl(*LABELLED)},
     "--val"),
    ("train-invalid-records", ["train", "--data", "{d}/t.jsonl", "--output", "{d}/m"],
     {"t.jsonl": labelled_with(accuracy=0)}, "t.jsonl"),
    ("train-fraction-one", ["train", "--data", "{d}/t.jsonl", "--val-fraction", "1", "--output", "{d}/m"],
     {"t.jsonl": jsonl(*LABELLED)}, "--val-fraction"),
    # the registry: models list / promote / rollback, export-ollama --registry, --model NAME[:N]
    ("models-list-unknown-name", ["models", "list", "nope", "--registry", "{d}/reg"], REGISTRY, "'nope'"),
    ("models-list-registry-is-a-file", ["models", "list", "--registry", "{d}/reg"], {"reg": "x"}, "reg"),
    ("models-list-corrupt-manifest", ["models", "list", "r", "--registry", "{d}/reg"],
     {**REGISTRY, "reg/r/2/manifest.json": "{not json"}, "r:2"),
    ("models-list-corrupt-history", ["models", "list", "r", "--registry", "{d}/reg"],
     {**REGISTRY, "reg/r/history.json": "[{"}, "history.json"),
    ("models-promote-unknown-name", ["models", "promote", "nope:2", "--data", "{d}/l.jsonl", "--registry", "{d}/reg"],
     {**REGISTRY, "l.jsonl": jsonl(*LABELLED)}, "'nope'"),
    ("models-promote-unknown-version", ["models", "promote", "r:7", "--data", "{d}/l.jsonl", "--registry",
                                       "{d}/reg"], {**REGISTRY, "l.jsonl": jsonl(*LABELLED)}, "no version 7"),
    ("models-promote-no-number", ["models", "promote", "r", "--data", "{d}/l.jsonl", "--registry", "{d}/reg"],
     {**REGISTRY, "l.jsonl": jsonl(*LABELLED)}, "NAME:N"),
    ("models-promote-the-promoted", ["models", "promote", "r:1", "--data", "{d}/l.jsonl", "--registry", "{d}/reg"],
     {**REGISTRY, "l.jsonl": jsonl(*LABELLED)}, "already the promoted"),
    ("models-promote-no-data", ["models", "promote", "r:2", "--registry", "{d}/reg"], REGISTRY, "--data"),
    ("models-promote-force-no-reason", ["models", "promote", "r:2", "--force", "--registry", "{d}/reg"], REGISTRY,
     "--reason"),
    ("models-promote-data-missing", ["models", "promote", "r:2", "--data", "{d}/l.jsonl", "--registry", "{d}/reg"],
     REGISTRY, "l.jsonl"),
    ("models-promote-unlabelled", ["models", "promote", "r:2", "--data", "{d}/l.jsonl", "--registry", "{d}/reg"],
     {**REGISTRY, "l.jsonl": labelled_with(accuracy=9)}, "accuracy"),
    ("models-promote-margin", ["models", "promote", "r:2", "--data", "{d}/l.jsonl", "--margin", "1.5",
                               "--registry", "{d}/reg"], {**REGISTRY, "l.jsonl": jsonl(*LABELLED)}, "--margin"),
    ("models-promote-corrupt-manifest", ["models", "promote", "r:2", "--data", "{d}/l.jsonl", "--registry",
                                         "{d}/reg"],
     {**REGISTRY, "reg/r/2/manifest.json": "[]", "l.jsonl": jsonl(*LABELLED)}, "r:2"),
    ("models-list-manifest-points-outside", ["models", "list", "r", "--registry", "{d}/reg"],
     {**REGISTRY, "reg/r/2/manifest.json": json.dumps({"gguf": {"file": "../../../x.gguf"}})}, "gguf.file"),
    ("models-rollback-unknown-name", ["models", "rollback", "nope", "--registry", "{d}/reg"], REGISTRY, "'nope'"),
    ("models-rollback-nothing-earlier", ["models", "rollback", "r", "--registry", "{d}/reg"], REGISTRY,
     "no earlier promoted version"),
    ("models-rollback-remote-daemon", ["models", "rollback", "r", "--host", "rater.invalid", "--registry", "{d}/reg"],
     {**REGISTRY, "reg/r/history.json": json.dumps([{"action": "promote", "version": 1, "previous": None},
                                                    {"action": "promote", "version": 2, "previous": 1}])},
     "rater.invalid"),
    ("models-promote-remote-daemon", ["models", "promote", "r:2", "--force", "--reason", "x", "--host",
                                      "rater.invalid", "--registry", "{d}/reg"], REGISTRY, "rater.invalid"),
    ("models-rollback-registry-is-a-file", ["models", "rollback", "r", "--registry", "{d}/reg"], {"reg": "x"}, "reg"),
    ("export-name-with-tag", ["export-ollama", "{d}/model", "--name", "r:v2", "--no-create"],
     {"model/readme.txt": "x"}, "--name"),
    ("export-registry-is-a-file", ["export-ollama", "{d}/model", "--no-create", "--registry", "{d}/reg"],
     {"model/readme.txt": "x", "reg": "x"}, "reg"),
    ("score-unknown-registered-version", ["score", "--file", "{d}/v.txt", "--backend", "llama-cpp", "--model", "r:9"],
     {"v.txt": VISIT, "reg/r/1/manifest.json": json.dumps(MANIFEST)}, "no version 9"),
]


def write_files(folder: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def patient_text_in(output: str) -> list[str]:
    flat = " ".join(f"{VISIT} {OTHER}".split())
    runs = {flat[i:i + 12] for i in range(len(flat) - 11)}
    return [MARKER] * (MARKER in output) + [run for run in runs if run in output]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No daemon, no proxy, no state outside tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("HCP_REGISTRY", str(tmp_path / "in" / "reg"))  # the rows' {d}/reg
    monkeypatch.delenv("HCP_API_TOKEN", raising=False)
    monkeypatch.delenv("HCP_OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("args", "files", "names"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_users_mistake_is_one_line_with_no_traceback_and_no_patient_text(isolated, args, files, names):
    folder = isolated / "in"
    folder.mkdir()
    write_files(folder, files)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, [a.replace("{d}", str(folder)) for a in args])
    output = result.output
    assert result.exit_code not in (0, None), f"accepted: {output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert names in errors[0], errors[0]
    assert patient_text_in(output) == []
    assert "s3cretpw" not in output
    for path, content in before.items():  # nothing the user gave is changed
        assert path.read_bytes() == content, path


def test_the_bad_input_table_covers_every_command():
    groups = ("data", "models", "serve")  # subcommands are listed as 'data validate', 'serve add-reviewer'
    commands = {case[1][0] for case in CASES} | {" ".join(case[1][:2]) for case in CASES if case[1][0] in groups}
    listed = {name for name in cli.commands if name not in ("data", "models")} | {
        f"{group} {n}" for group in groups for n in cli.commands[group].commands}
    assert listed <= commands, listed - commands
    assert len(CASES) >= 60


# --- the server's routes ----------------------------------------------------------------------------------------

SERVER_VISIT = f"RD: I understand how you feel, {MARKER}. Patient: My {MARKER} diet is hard."


def review_body(**changes: object) -> dict:
    from tests.fakes import GOOD_ANSWER

    rating = {**GOOD_ANSWER, **changes}
    original = {"rating": GOOD_ANSWER, "overall": 4.5, "model": "fake-model", "backend": "fake", "prompt_tokens": 100,
                "output_tokens": 100, "seconds": 1.0, "attempts": 1}
    return {"transcript": SERVER_VISIT, "review": rating, "original": original}


def upload(name: str, content: bytes) -> dict:
    return {"files": {"file": (name, content)}}


# (name, method, path, request keyword arguments for httpx, the status wanted, a phrase of the one-line detail)
SERVER_CASES = [
    ("score-not-json", "POST", "/score", {"content": b'{"transcript": "RD'}, 400, "not valid JSON"),
    ("score-a-list", "POST", "/score", {"json": [SERVER_VISIT]}, 400, "object"),
    ("score-number", "POST", "/score", {"json": {"transcript": 7}}, 400, "transcript"),
    ("score-seed-too-big", "POST", "/score", {"json": {"transcript": SERVER_VISIT, "seed": 2**40}}, 400, "seed"),
    ("score-unknown-field", "POST", "/score", {"json": {"transcript": SERVER_VISIT, "temprature": 1}}, 400,
     "temprature"),
    ("score-blank", "POST", "/score", {"json": {"transcript": " \n\t"}}, 422, "empty"),
    ("batch-empty-file", "POST", "/batch", upload("visits.jsonl", b""), 400, "visits.jsonl"),
    ("batch-csv-no-header", "POST", "/batch", upload("visits.csv", f'"{VISIT}","x"\n"{OTHER}","y"\n'.encode()),
     400, "visits.csv"),
    ("batch-binary", "POST", "/batch", upload("visits.jsonl", b"\x00\x01\x02" * 50), 400, "visits.jsonl"),
    ("batch-not-utf8", "POST", "/batch", upload("visits.jsonl", f'{{"transcript": "{MARKER} caf'.encode()
                                                  + b'\xe9"}\n'), 400, "visits.jsonl"),
    ("batch-word-document", "POST", "/batch", upload("visits.docx", b"PK\x03\x04"), 400, ".docx"),
    ("batch-list-of-numbers", "POST", "/batch", {"json": [1, 2]}, 400, "1"),
    ("batch-no-transcript-field", "POST", "/batch", {"json": [{"id": "a", "text": VISIT}]}, 400, "transcript"),
    ("batch-bad-name", "POST", "/batch?name=../etc", {"json": [VISIT]}, 400, "name"),
    ("batch-results-unknown", "GET", "/batch/nope/results.jsonl", {}, 404, "nope"),
    ("review-score-out-of-range", "POST", "/reviews", {"json": review_body(empathy=7)}, 400, "empathy"),
    ("review-no-transcript", "POST", "/reviews", {"json": {"review": {}, "original": {}}}, 400, "transcript"),
    ("review-quote-not-in-transcript", "POST", "/reviews",
     {"json": review_body(empathy_evidence=[f"RD: you must eat {MARKER} daily"])}, 422, "empathy_evidence"),
    ("review-not-json", "POST", "/reviews", {"content": b"review please",
                                             "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, rubric):
    from tests.fakes import GOOD_ANSWER, FakeBackend
    from tests.serving import served

    folder = tmp_path_factory.mktemp("served")
    with served(FakeBackend(GOOD_ANSWER), rubric, folder) as running:
        yield running


@pytest.mark.parametrize(("method", "path", "request_args", "status", "phrase"), [case[1:] for case in SERVER_CASES],
                         ids=[case[0] for case in SERVER_CASES])
def test_a_bad_request_is_one_line_with_its_status_and_no_patient_text(server, method, path, request_args, status,
                                                                       phrase):
    answer = server.client.request(method, path, **request_args)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and phrase in detail, detail
    assert "Traceback" not in answer.text and patient_text_in(answer.text) == []
    assert MARKER not in answer.text
