"""A stand-in for the Ollama daemon: the HTTP endpoints hcp uses, answering as the daemon does, with real
llama.cpp inference behind `/api/chat`.

The Ollama daemon cannot be installed here, so hcp's Ollama path is tested against this double through the
official `ollama` client over real HTTP on 127.0.0.1. What it does as the daemon does (Ollama 0.6–0.12):

- `GET /api/version`, `GET /api/tags`, `POST /api/show` (`model_info` from the GGUF's metadata without
  `general.name` and `tokenizer.chat_template`; arrays only with `verbose`, else null), `DELETE /api/delete`,
  `POST /api/copy` (`source`, `destination`: the destination names the source's model, replacing any model of
  that name; 200 with an empty body, 404 for a missing source, 400 without a destination);
- `HEAD`/`POST /api/blobs/sha256:<digest>` (the body's digest is checked), `POST /api/create` in its JSON form
  (`model`, `from`, `files`, `template`, `system`, `parameters`, `license`; unknown parameter names are a 400);
- `POST /api/chat`: the request's `format` (a JSON schema, or "json") becomes the grammar; options temperature,
  seed, top_k, top_p, min_p, num_ctx, num_predict, num_keep, repeat_penalty, stop, over the model's parameters,
  over the daemon's defaults; a prompt longer than num_ctx is cut silently as the runner does (its first num_keep
  tokens and its last ones kept) and `prompt_eval_count` reports what was kept; `done_reason` "stop"/"length",
  durations in nanoseconds;
- errors as `{"error": "..."}`: 404 for a missing model, 400 for bad JSON, a bad schema or a bad parameter.

Where it differs: the chat is rendered with the GGUF's own Jinja chat template (hcp.chat.render_chat), not the
model's Go TEMPLATE (the export writes the two to render the same text); only `stream: false` is answered; no
quantize, adapters or registry pulls. `logprobs` / `top_logprobs` are answered from version 0.12.11 on (a
top-level `logprobs` list of {token, logprob, bytes, top_logprobs}, from the raw logits before the grammar;
older versions ignore the fields). Test knobs: `version`, `force_replies(...)` (the next answers, without
inference), `send_tokenizer` (False: a daemon that leaves the vocabulary out of a verbose /api/show), and
`requests` (every request received, to assert what hcp sent). At most one llama.cpp model is loaded, with
`threads` threads (1 by default: two llama.cpp instances at full width slow each other tenfold).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_VERSION = "0.6.5"
LOGPROBS_VERSION = (0, 12, 11)  # the first daemon that answers `logprobs` / `top_logprobs` in /api/chat
MAX_TOP_LOGPROBS = 20
DEFAULT_OPTIONS: dict[str, Any] = {  # the daemon's defaults (api.DefaultOptions)
    "num_ctx": 2048, "num_keep": 4, "num_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.9,
    "min_p": 0.0, "repeat_penalty": 1.1, "seed": -1,
}
KNOWN_PARAMETERS = frozenset({
    "numa", "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only",
    "use_mmap", "use_mlock", "embedding_only", "num_thread", "num_keep", "seed", "num_predict", "top_k", "top_p",
    "min_p", "tfs_z", "typical_p", "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "mirostat", "mirostat_tau", "mirostat_eta", "penalize_newline", "stop",
})
# What the daemon picks for a GGUF whose Jinja template is ChatML (its template/chatml.gotmpl), and otherwise.
CHATML_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")
PLAIN_TEMPLATE = "{{ .Prompt }}"
BLOB_NAME = re.compile(r"^/api/blobs/sha256[:-]([0-9a-f]{64})$")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ForcedReply:
    """An answer the double gives instead of running the model (the prompt is still rendered and counted)."""

    content: str
    done_reason: str = "stop"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: Any  # parsed JSON; for a blob upload {"bytes": n}


@dataclass
class Model:
    name: str
    gguf: Path
    template: str
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    modified_at: str = field(default_factory=lambda: _now())

    @property
    def digest(self) -> str:
        manifest = json.dumps([str(self.gguf), self.gguf.stat().st_size, self.template, self.system,
                               self.parameters, self.license], sort_keys=True)
        return hashlib.sha256(manifest.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def full_name(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@lru_cache(maxsize=8)
def gguf_metadata(path: str) -> tuple[dict[str, Any], int]:
    """(metadata as JSON-able values, parameter count) of a GGUF; gguf-py takes seconds on a large vocabulary."""
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {key: f.contents() for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    return meta, int(sum(int(t.n_elements) for t in reader.tensors))


def truncate_prompt(tokens: list[int], num_ctx: int, num_keep: int) -> list[int]:
    """The runner's silent truncation: a prompt over num_ctx keeps its first num_keep tokens and its last ones."""
    if len(tokens) <= num_ctx:
        return tokens
    keep = max(0, min(num_keep, num_ctx - 1))
    return tokens[:keep] + tokens[len(tokens) - (num_ctx - keep):]


def shift_context(tokens: list[int], num_ctx: int, num_keep: int) -> list[int]:
    """The runner's context shift when the context is full: half of what follows the kept tokens is dropped."""
    if len(tokens) < num_ctx:
        return tokens
    keep = max(0, min(num_keep, num_ctx - 1))
    return tokens[:keep] + tokens[keep + (len(tokens) - keep) // 2:]


_LEGACY_ACTIONS = re.compile(r"\{\{-?\s*(\.System|\.Prompt|\.Response|\"\{\{\")\s*-?\}\}")


def render_legacy_template(template: str, system: str, prompt: str) -> str | None:
    """How the daemon renders a legacy template (only {{ .System }}, {{ .Prompt }}, {{ .Response }}) for the turn
    it generates: the actions substituted and the text cut where the response begins. None for templates that
    use anything else (.Messages, if, range): those the double leaves to the GGUF's Jinja template."""
    if "{{" not in template or _LEGACY_ACTIONS.sub("", template).count("{{"):
        return None
    head = re.split(r"\{\{-?\s*\.Response\s*-?\}\}", template, maxsplit=1)[0]
    values = {".System": system, ".Prompt": prompt, '"{{"': "{{"}
    return _LEGACY_ACTIONS.sub(lambda m: values[m.group(1)], head)


class _Runner:
    """One GGUF loaded in llama.cpp, with its chat template (the daemon's runner process)."""

    def __init__(self, path: Path, num_ctx: int, threads: int) -> None:
        from llama_cpp import Llama

        started = time.perf_counter_ns()
        try:
            self.llm = Llama(model_path=str(path), n_ctx=num_ctx, n_threads=threads, n_threads_batch=threads,
                             n_batch=512, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise HttpError(500, f"llama runner process has terminated: {exc}") from None
        self.load_ns = time.perf_counter_ns() - started
        self.path, self.num_ctx = path, num_ctx
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template") or ""
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") == "true"
        self.bos = self._piece(self.llm.token_bos())
        self.eos = self._piece(self.llm.token_eos())

    def _piece(self, token: int) -> str:
        return "" if token < 0 else self.llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        from hcp.chat import render_chat
        from hcp.errors import BackendError

        if not self.template:
            raise HttpError(500, f"ollama double: {self.path.name} has no chat template to render the chat with")
        try:
            text = render_chat(self.template, messages, bos_token=self.bos, eos_token=self.eos)
        except BackendError as exc:
            raise HttpError(500, str(exc)) from None
        has_bos = bool(self.bos) and text.startswith(self.bos)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos and not has_bos, special=True)

    def legacy_prompt_tokens(self, template: str, messages: list[dict[str, str]]) -> list[int] | None:
        """The prompt from the model's Go TEMPLATE, when it is a legacy one and the chat is one system + user
        turn (what hcp sends); BOS comes from the GGUF's add-BOS flag, as in the daemon."""
        roles = [m["role"] for m in messages]
        if roles not in (["user"], ["system", "user"]):
            return None
        system = messages[0]["content"] if roles[0] == "system" else ""
        text = render_legacy_template(template, system, messages[-1]["content"])
        if text is None:
            return None
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=True)

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def close(self) -> None:
        self.llm.close()


@lru_cache(maxsize=8)
def _grammar(fmt: str) -> Any:
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    from hcp.scoring.backends.sampling import schema_grammar_text

    if fmt == '"json"':
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_string(schema_grammar_text(fmt), verbose=False)


class OllamaDouble:
    """The daemon on 127.0.0.1:<free port>, pre-seeded with `models` ({name: GGUF path}). Use as a context
    manager, or start() / close()."""

    def __init__(self, models: Mapping[str, Path] | None = None, *, version: str = DEFAULT_VERSION,
                 threads: int = 1, blob_dir: Path | None = None) -> None:
        self.version = version
        self.threads = threads
        self.send_tokenizer = True
        self.rendered_with = ""  # how the last chat's prompt was made: "template" (the Go TEMPLATE) or "jinja"
        self.requests: list[Request] = []
        self._forced: deque[ForcedReply] = deque()
        self._models: dict[str, Model] = {}
        self._own_blob_dir = blob_dir is None
        self.blob_dir = Path(tempfile.mkdtemp(prefix="ollama-double-")) if blob_dir is None else blob_dir
        self._lock = threading.Lock()  # the model registry
        self._run_lock = threading.Lock()  # the one loaded model: one chat at a time, as one runner slot
        self._runner: _Runner | None = None
        for name, path in (models or {}).items():
            self.add_model(name, Path(path))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ollama-double", daemon=True)

    # -- lifecycle and knobs

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OllamaDouble:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever() that never started
            self._server.shutdown()
        self._server.server_close()
        with self._run_lock:
            if self._runner is not None:
                self._runner.close()
                self._runner = None
        if self._own_blob_dir:
            shutil.rmtree(self.blob_dir, ignore_errors=True)

    def __enter__(self) -> OllamaDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_model(self, name: str, gguf: Path, **fields: Any) -> Model:
        template = fields.pop("template", None)
        if template is None:
            chat_template = str(gguf_metadata(str(gguf))[0].get("tokenizer.chat_template", ""))
            template = CHATML_TEMPLATE if "<|im_start|>" in chat_template else PLAIN_TEMPLATE
        model = Model(full_name(name), gguf, template, **fields)
        with self._lock:
            self._models[model.name] = model
        return model

    def force_replies(self, *replies: ForcedReply) -> None:
        """The next chat answers, in order, given without running the model."""
        self._forced.extend(replies)

    def reset(self) -> None:
        """Back to a plain daemon: no recorded requests, no forced replies, the default version."""
        self.requests.clear()
        self._forced.clear()
        self.version = DEFAULT_VERSION
        self.send_tokenizer = True

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    # -- endpoints

    def _model(self, name: Any) -> Model:
        if not isinstance(name, str) or not name:
            raise HttpError(400, "model is required")
        model = self._models.get(full_name(name))
        if model is None:
            raise HttpError(404, f"model '{name}' not found")
        return model

    def version_reply(self) -> dict[str, Any]:
        return {"version": self.version}

    def tags(self) -> dict[str, Any]:
        with self._lock:
            models = list(self._models.values())
        return {"models": [{"name": m.name, "model": m.name, "modified_at": m.modified_at,
                            "size": m.gguf.stat().st_size, "digest": m.digest, "details": self._details(m)}
                           for m in models]}

    def _details(self, model: Model) -> dict[str, Any]:
        import gguf

        meta, parameters = gguf_metadata(str(model.gguf))
        arch = str(meta.get("general.architecture", ""))
        try:
            quant = gguf.LlamaFileType(int(meta.get("general.file_type", -1))).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = "unknown"
        size = f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.2f}M"
        return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
                "parameter_size": size, "quantization_level": quant}

    def show(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._model(body.get("model") or body.get("name"))
        verbose = bool(body.get("verbose")) and self.send_tokenizer
        meta, parameters = gguf_metadata(str(model.gguf))
        info = {k: (v if verbose or not isinstance(v, list) else None) for k, v in meta.items()
                if k not in ("general.name", "tokenizer.chat_template")}
        info["general.parameter_count"] = parameters
        reply = {
            "license": model.license, "modelfile": self._modelfile(model), "parameters": self._parameter_lines(model),
            "template": model.template, "details": self._details(model), "model_info": info,
            "capabilities": ["completion"], "modified_at": model.modified_at,
        }
        if model.system:
            reply["system"] = model.system
        return reply

    def _parameter_lines(self, model: Model) -> str:
        lines = []
        for key, value in model.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
        return "\n".join(lines)

    def _modelfile(self, model: Model) -> str:
        lines = ['# Modelfile generated by "ollama show"', "# To build a new Modelfile based on this, replace FROM "
                 "with:", f"# FROM {model.name}", "", f"FROM {model.gguf}", f'TEMPLATE """{model.template}"""']
        if model.system:
            lines.append(f'SYSTEM """{model.system}"""')
        lines += [f"PARAMETER {line}" for line in self._parameter_lines(model).splitlines()]
        if model.license:
            lines.append(f'LICENSE """{model.license}"""')
        return "\n".join(lines) + "\n"

    def blob_exists(self, digest: str) -> bool:
        return (self.blob_dir / f"sha256-{digest}").is_file()

    def put_blob(self, digest: str, data: bytes) -> None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise HttpError(400, f'digest mismatch, expected "sha256:{digest}", got "sha256:{actual}"')
        (self.blob_dir / f"sha256-{digest}").write_bytes(data)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "model is required")
        for unsupported in ("quantize", "adapters"):
            if body.get(unsupported):
                raise HttpError(400, f"ollama double: '{unsupported}' is not implemented")
        parameters = dict(body.get("parameters") or {})
        for key in parameters:
            if key not in KNOWN_PARAMETERS:
                raise HttpError(400, f"unknown parameter '{key}'")
        base: Model | None = self._model(body["from"]) if body.get("from") else None
        files = body.get("files") or {}
        gguf_path = base.gguf if base else None
        for filename, digest in files.items():
            hexdigest = str(digest).removeprefix("sha256:")
            if not self.blob_exists(hexdigest):
                raise HttpError(400, f"blob {digest} for {filename} not found — upload it first")
            blob = self.blob_dir / f"sha256-{hexdigest}"
            with blob.open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise HttpError(400, f"{filename}: unsupported file format (not a GGUF)")
            gguf_path = blob
        if gguf_path is None:
            raise HttpError(400, "neither 'from' or 'files' was specified")
        license_text = body.get("license") or (base.license if base else "")
        fields = {
            "system": body.get("system") if body.get("system") is not None else (base.system if base else ""),
            "parameters": {**(base.parameters if base else {}), **parameters},
            "license": "\n".join(license_text) if isinstance(license_text, list) else str(license_text),
        }
        template = body.get("template") or (base.template if base else None)
        self.add_model(name, gguf_path, template=template, **fields)
        return {"status": "success"}

    def copy(self, body: dict[str, Any]) -> None:
        source = self._model(body.get("source"))
        destination = body.get("destination")
        if not isinstance(destination, str) or not destination:
            raise HttpError(400, "destination is required")
        copied = Model(full_name(destination), source.gguf, source.template, source.system,
                       dict(source.parameters), source.license)
        with self._lock:
            self._models[copied.name] = copied

    def delete(self, body: dict[str, Any]) -> None:
        model = self._model(body.get("model") or body.get("name"))
        with self._lock:
            del self._models[model.name]

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._model(body.get("model"))
        if body.get("stream", True) is not False:
            raise HttpError(400, "ollama double: only stream: false is implemented")
        messages = body.get("messages") or []
        if not all(isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in messages):
            raise HttpError(400, "invalid messages")
        messages = [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in messages]
        if model.system and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": model.system})
        options = {**DEFAULT_OPTIONS, **model.parameters, **(body.get("options") or {})}
        grammar = self._format_grammar(body.get("format"))
        num_ctx, num_keep = int(options["num_ctx"]), int(options["num_keep"])
        started = time.perf_counter_ns()
        with self._run_lock:
            runner, load_ns = self._load(model, num_ctx)
            legacy = runner.legacy_prompt_tokens(model.template or "", messages)
            self.rendered_with = "template" if legacy is not None else "jinja"
            tokens = truncate_prompt(legacy if legacy is not None else runner.prompt_tokens(messages), num_ctx,
                                     num_keep)
            forced = self._forced.popleft() if self._forced else None
            top = self._top_logprobs(body)
            logprobs: list[dict[str, Any]] | None = None
            if forced is not None:
                content, done_reason = forced.content, forced.done_reason
                eval_count, prompt_ns, eval_ns = runner.count(content), 1_000_000, 1_000_000
            else:
                content, done_reason, eval_count, prompt_ns, eval_ns, logprobs = self._generate(
                    runner, shift_context(tokens, num_ctx, num_keep), options, grammar, top)
        extra = {"logprobs": logprobs} if logprobs is not None else {}
        return {**extra,
            "model": body["model"], "created_at": _now(), "message": {"role": "assistant", "content": content},
            "done": True, "done_reason": done_reason, "total_duration": time.perf_counter_ns() - started,
            "load_duration": load_ns, "prompt_eval_count": len(tokens), "prompt_eval_duration": prompt_ns,
            "eval_count": eval_count, "eval_duration": eval_ns,
        }

    def _top_logprobs(self, body: dict[str, Any]) -> int | None:
        """How many alternatives per token to answer with, or None for no `logprobs` (an older daemon ignores
        the fields, as it ignores any field it does not know)."""
        from hcp.scoring.backends.ollama import parse_version

        if not body.get("logprobs") or (parse_version(self.version) or (0, 0, 0)) < LOGPROBS_VERSION:
            return None
        top = int(body.get("top_logprobs") or 0)
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise HttpError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        return top

    def _format_grammar(self, fmt: Any) -> Any:
        if fmt in (None, ""):
            return None
        if not (fmt == "json" or isinstance(fmt, dict)):
            raise HttpError(400, f"invalid format: {json.dumps(fmt)[:80]}; expected \"json\" or a JSON schema")
        try:
            return _grammar(json.dumps(fmt))
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise HttpError(400, f"invalid JSON schema in format: {exc}") from None

    def _load(self, model: Model, num_ctx: int) -> tuple[_Runner, int]:
        """The model's runner at num_ctx; another model or context size replaces it, as the daemon reloads."""
        runner = self._runner
        if runner is not None and runner.path == model.gguf and runner.num_ctx == num_ctx:
            return runner, 50_000
        if runner is not None:
            runner.close()
            self._runner = None
        self._runner = _Runner(model.gguf, num_ctx, self.threads)
        return self._runner, self._runner.load_ns

    def _generate(self, runner: _Runner, tokens: list[int], options: dict[str, Any], grammar: Any,
                  top: int | None = None) -> tuple[str, str, int, int, int, list[dict[str, Any]] | None]:
        import llama_cpp

        num_predict = int(options["num_predict"])
        seed = int(options["seed"])
        stop = options.get("stop") or []
        llama_cpp.llama_perf_context_reset(runner.llm.ctx)
        recorder = LogprobRecorder(runner, top) if top is not None else None
        out = runner.llm.create_completion(
            tokens, max_tokens=num_predict if num_predict > 0 else None, temperature=float(options["temperature"]),
            top_k=int(options["top_k"]), top_p=float(options["top_p"]), min_p=float(options["min_p"]),
            repeat_penalty=float(options["repeat_penalty"]), seed=seed if seed >= 0 else None,
            stop=[stop] if isinstance(stop, str) else list(stop), grammar=grammar,
            logits_processor=llama_cpp.LogitsProcessorList([recorder]) if recorder is not None else None,
        )
        perf = llama_cpp.llama_perf_context(runner.llm.ctx)
        choice = out["choices"][0]
        done_reason = "length" if choice["finish_reason"] == "length" else "stop"
        return (choice["text"], done_reason, out["usage"]["completion_tokens"], int(perf.t_p_eval_ms * 1e6),
                int(perf.t_eval_ms * 1e6), recorder.entries() if recorder is not None else None)


class LogprobRecorder:
    """A llama-cpp-python logits processor that keeps, per generated token, its log-probability and the `top`
    likeliest tokens, from the raw logits (first in the sampler chain: before the repeat penalty and the
    grammar, as the daemon reports them). The token chosen at one step is the last input of the next; the step
    that samples the end of generation names the last token, so a reply cut at num_predict lacks its last one."""

    def __init__(self, runner: _Runner, top: int) -> None:
        self.runner, self.top = runner, top
        self.pending: Any = None  # the last step's log-probabilities [n_vocab], until its token is known
        self.out: list[dict[str, Any]] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        if self.pending is not None:
            logprobs, token = self.pending, int(input_ids[-1])
            best = np.argsort(-logprobs)[: self.top]
            self.out.append({**self._token(token, float(logprobs[token])),
                             "top_logprobs": [self._token(int(t), float(logprobs[t])) for t in best]})
        logits = np.asarray(scores, dtype=np.float64)
        top = logits.max()
        self.pending = logits - (top + np.log(np.exp(logits - top).sum()))
        return scores

    def _token(self, token: int, logprob: float) -> dict[str, Any]:
        piece = self.runner.llm._model.token_to_piece(token).rstrip(b"\0")
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}

    def entries(self) -> list[dict[str, Any]]:
        return self.out


def _handler(double: OllamaDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ollama-double"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass  # the daemon's access log is not the tests' business

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_HEAD(self) -> None:  # noqa: N802
            self._dispatch("HEAD")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        for line in iter(self.rfile.readline, b""):  # trailer lines, up to the blank one
                            if line in (b"\r\n", b"\n"):
                                break
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _json(self, raw: bytes) -> dict[str, Any]:
            if not raw:
                raise HttpError(400, "missing request body")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise HttpError(400, f"invalid character in request body: {exc}") from None
            if not isinstance(body, dict):
                raise HttpError(400, "request body must be a JSON object")
            return body

        def _dispatch(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            raw = self._body() if method in ("POST", "DELETE") else b""
            blob = BLOB_NAME.match(path)
            try:
                if blob:
                    double.requests.append(Request(method, path, {"bytes": len(raw)}))
                    self._blob(method, blob.group(1), raw)
                    return
                body = self._json(raw) if method in ("POST", "DELETE") else None
                double.requests.append(Request(method, path, body))
                route = (method, path)
                if route == ("GET", "/"):
                    self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
                elif route == ("GET", "/api/version"):
                    self._reply(200, double.version_reply())
                elif route == ("GET", "/api/tags"):
                    self._reply(200, double.tags())
                elif route == ("POST", "/api/show"):
                    self._reply(200, double.show(body or {}))
                elif route == ("POST", "/api/chat"):
                    self._reply(200, double.chat(body or {}))
                elif route == ("POST", "/api/create"):
                    self._reply(200, double.create(body or {}))
                elif route == ("POST", "/api/copy"):
                    double.copy(body or {})
                    self._send(200, b"", "application/json; charset=utf-8")
                elif route == ("DELETE", "/api/delete"):
                    double.delete(body or {})
                    self._send(200, b"", "application/json; charset=utf-8")
                else:
                    self._send(404, b"404 page not found", "text/plain")
            except HttpError as exc:
                self._reply(exc.status, {"error": str(exc)})

        def _blob(self, method: str, digest: str, raw: bytes) -> None:
            if method == "HEAD":
                self._send(200 if double.blob_exists(digest) else 404, b"", "text/plain")
            elif method == "POST":
                double.put_blob(digest, raw)
                self._send(201, b"", "text/plain")
            else:
                self._send(404, b"404 page not found", "text/plain")

        def _reply(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler
