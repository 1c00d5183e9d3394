"""The OpenAI-compatible backend: vLLM, SGLang, llama.cpp's llama-server, llama-cpp-python's server, LM Studio.

These engines serve many requests at once and scale past one machine; hcp drives them through the chat
completions API over plain HTTP (httpx: the servers differ in the fields they take, which the official client
would only pass through as `extra_body`). The same guarantees as the other backends hold:

- Output under the rating's JSON schema. Servers spell that request differently; the first call finds out
  which form this server honours by asking for a one-field schema and checking the answer obeys it: the
  standard `response_format: {type: json_schema}` (vLLM, SGLang, llama-server), `{type: json_object, schema}`
  (llama-cpp-python's server), or vLLM's `guided_json`. A server that honours none is refused.
- Tokens counted before sending, from the best source there is: a tokenize endpoint that renders the chat
  (vLLM's `/tokenize` with messages: exact), the server's own template then its tokenizer (llama-server's
  `/apply-template` and `/tokenize`, special tokens added as its chat completions add them: exact), one that
  tokenizes text (llama-cpp-python's `/extras/tokenize/count`: exact text, the template's share bounded), the
  model's own tokenizer when the user gives its folder (`tokenizer`: exact), else UTF-8 bytes (an upper bound: a
  transcript that would fit may be refused, none that does not fit is sent). The server's own
  `usage.prompt_tokens` is checked after every call, and a server that refuses a prompt over its context
  (HTTP 400: vLLM's "maximum context length", llama-server's "exceeds the available context size") is a
  ContextOverflowError. llama-server's context per slot (`/props`) caps num_ctx, as vLLM's max_model_len does.
- `finish_reason == "length"` is a cut-off answer: never accepted (scoring retries, then reports it).
- The prompt the model was trained on: a chat template that refuses a system turn (Gemma 2's raises "System role
  not supported", and the server answers 400) gets the rubric folded into the first user turn, as training and
  the other backends do it (`hcp.chat.fold_system`); found on the first refusal, then kept.
- Which server rated: the base URL and what the server says it serves (/v1/models, llama-server's model path) make
  `model_digest`, so another server with the same model name is another rater. No credentials in the URL.
- Straight to the server: no proxy from the environment (`DIRECT`), none at all.
- No transcript text in any log line or error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from hcp.chat import TEMPLATE_VARIABLES, fold_system
from hcp.errors import BackendError, ContextOverflowError, ModelNotFoundError
from hcp.scoring.backends import DIRECT, Backend, GenerateOptions, Generation, Messages
from hcp.scoring.confidence import TokenStep, distributions_from_steps, score_fields

log = logging.getLogger(__name__)

API_KEY_VARIABLE = "HCP_OPENAI_API_KEY"
DEFAULT_TIMEOUT = 600.0  # seconds: a long answer from a busy server
CONNECT_TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # the most `hcp batch --parallel` sends at once
TEMPLATE_TOKENS_PER_MESSAGE = 32  # the chat template's share of each message when the server counts text only
PROBE_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"ok": {"type": "integer", "enum": [7]}}, "required": ["ok"],
    "additionalProperties": False,
}
TOP_LOGPROBS = 20  # the OpenAI API's most; every score token unless very unlikely
PROBE_MESSAGES = [{"role": "user", "content": "Answer in JSON."}]
PROBE_ANSWER = '{"ok":7}'  # the only answer PROBE_SCHEMA allows, without whitespace
PROBE_TOKENS = 32
# The fields of a /v1/models entry that say which model it is; the rest ('created', vLLM's permission ids) change
# from one request to the next.
IDENTITY_FIELDS = ("id", "owned_by", "root", "parent", "max_model_len", "meta")
# Of llama-server's `meta`, what is the server's setting rather than the model's: the context of a slot, which
# -c and -np decide. A server restarted with more slots serves the same model, and rates the same way.
SERVER_SETTINGS = ("n_ctx",)


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "rating", "schema": schema,
                                                                      "strict": True}}}


def _json_object(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_object", "schema": schema}}


def _guided_json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"guided_json": schema}


# The forms of "answer under this schema", in the order they are tried: (name, request fields).
SCHEMA_FORMS = (("json_schema", _json_schema), ("json_object+schema", _json_object), ("guided_json", _guided_json))


def normalize_base_url(url: str) -> str:
    """The API root with its version path: 'http://host:8000' -> 'http://host:8000/v1'; a path given is kept."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    if "@" in text.split("://", 1)[1].split("/", 1)[0]:  # refused before anything quotes the address
        raise BackendError("--base-url: a user name or password in the address is not supported (it would be "
                           f"written into messages and results) — give the address without it, and the key with "
                           f"--api-key or ${API_KEY_VARIABLE}")
    try:
        parts = urlsplit(text)
    except ValueError:  # an unbalanced IPv6 bracket, say
        raise BackendError(f"--base-url {url!r} is not a valid address — give one like http://127.0.0.1:8000/v1") \
            from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackendError(f"--base-url {url!r} is not an http(s) address — give one like http://127.0.0.1:8000/v1")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        raise BackendError(f"--base-url {url!r} has an invalid port — give one like http://127.0.0.1:8000/v1") from None
    if parts.hostname.endswith("."):
        from hcp.scoring.backends.ollama import TRAILING_DOT

        raise BackendError(f"--base-url {url!r}: {TRAILING_DOT}")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: str | None,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout: float | None = None,
        tokenizer: str | Path | None = None,
        allow_remote: bool = False,
    ) -> None:
        """Connect to the server at `base_url` and check that it serves `model` (None: its only model).
        `api_key`: sent as a bearer token (else $HCP_OPENAI_API_KEY). `tokenizer`: a folder with the model's
        own tokenizer, for exact prompt counts where the server has no tokenize endpoint."""
        from hcp.scoring.backends.ollama import is_loopback

        self.base_url = normalize_base_url(base_url)
        if not is_loopback(self.base_url) and not allow_remote:
            raise BackendError(
                f"{self.base_url} is not on this machine: transcripts (patient data) would leave it — if that "
                "server is yours and trusted, pass --allow-remote (or set model.allow_remote: true in a --config "
                "file)")
        self.root = self.base_url.rsplit("/v1", 1)[0] if self.base_url.endswith("/v1") else self.base_url
        self.timeout = timeout or DEFAULT_TIMEOUT
        key = api_key or os.environ.get(API_KEY_VARIABLE)
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
            **DIRECT,
        )
        self._lock = threading.Lock()  # the one-time probes, when a batch calls from several threads
        self._schema_form: str | None = None
        self._counter: Any = None  # (kind, how to count), found on first use
        self._tokenizer_dir = Path(tokenizer) if tokenizer else None
        self._max_model_len: int | None = None
        self._fold_system = False  # the model's template takes no system turn: fold it into the first user turn
        # llama.cpp's llama-server (it answers /props): it takes llama.cpp's sampling fields beside OpenAI's.
        self._llama_server = False
        self._identity: dict[str, Any] = {"server": self.base_url}  # who rates: the address, and what it says it serves
        self.model = self._pick_model(model)
        self._read_props()

    # -- talking to the server

    def _request(self, method: str, url: str, action: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise BackendError(f"the server at {self.base_url} did not answer {action} within {self.timeout:g} s — "
                               "raise --timeout, or check the server's load") from None
        except httpx.ConnectError:
            raise BackendError(f"no OpenAI-compatible server answers at {self.base_url} — start it (vLLM: 'vllm "
                               "serve MODEL', llama.cpp: 'llama-server -m MODEL.gguf') or check --base-url") from None
        except httpx.TransportError as exc:
            raise BackendError(f"lost the connection to {self.base_url} during {action} ({type(exc).__name__}) — "
                               "check that the server still runs") from None

    def _json(self, response: httpx.Response, action: str) -> Any:
        if response.status_code in (401, 403):
            raise BackendError(f"the server at {self.base_url} refused {action} (HTTP {response.status_code}) — "
                               f"give its API key with --api-key or ${API_KEY_VARIABLE}")
        if response.status_code == 404 and action == "the model list":
            raise BackendError(f"{self.base_url}/models not found — is --base-url the server's API root "
                               "(usually ending in /v1)?")
        if response.status_code >= 400:
            raise BackendError(f"the server at {self.base_url} answered {action} with HTTP {response.status_code}: "
                               f"{_error_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"the server at {self.base_url} sent a reply to {action} that is not JSON — check "
                               "that --base-url is an OpenAI-compatible API") from None

    def _pick_model(self, wanted: str | None) -> str:
        listing = self._json(self._request("GET", f"{self.base_url}/models", "the model list"), "the model list")
        entries = [m for m in listing.get("data") or [] if isinstance(m, dict) and m.get("id")]
        served = [str(m["id"]) for m in entries]
        if wanted is None:
            if len(served) != 1:
                raise BackendError(f"the server at {self.base_url} serves {len(served)} models "
                                   f"({', '.join(served) or 'none'}) — name one with --model")
            wanted = served[0]
        elif served and wanted not in served:
            raise ModelNotFoundError(f"model {wanted!r} is not served at {self.base_url} — it serves: "
                                     f"{', '.join(served)}; pass one of them with --model")
        for entry in entries:
            if entry["id"] == wanted:
                # What the server says of the model, but what changes per request (vLLM's 'created' and permission ids)
                self._identity["model"] = {k: entry[k] for k in IDENTITY_FIELDS if k in entry}
                if isinstance(entry.get("meta"), dict):
                    self._identity["model"]["meta"] = {k: v for k, v in entry["meta"].items()
                                                       if k not in SERVER_SETTINGS}
                if isinstance(entry.get("max_model_len"), int):
                    self._max_model_len = entry["max_model_len"]  # vLLM says it; others do not
        return wanted

    def _read_props(self) -> None:
        """llama-server's /props: the model file it serves (its identity) and the context each slot has (a request
        longer than that is refused, so num_ctx is capped by it). Other servers have no /props: nothing to read."""
        props = self._try_json("GET", f"{self.root}/props")
        if not isinstance(props, dict):
            return
        self._llama_server = True
        if isinstance(props.get("model_path"), str):
            self._identity["model_path"] = props["model_path"]
        settings = props.get("default_generation_settings")
        slot = settings.get("n_ctx") if isinstance(settings, dict) else None
        slot = slot if isinstance(slot, int) else props.get("n_ctx")
        if isinstance(slot, int) and not isinstance(slot, bool) and slot > 0:
            log.info("the server at %s gives each request %d tokens of context (/props)", self.base_url, slot)
            self._max_model_len = min(self._max_model_len or slot, slot)

    def model_digest(self) -> str | None:
        """Which server and model rate: a digest of the address (no credentials: they are refused) and what the
        server says it serves (/v1/models, llama-server's model path). Another server serving the same model name
        is another rater, so its ratings are never mixed with this one's."""
        return hashlib.sha256(json.dumps(self._identity, sort_keys=True, default=str).encode()).hexdigest()

    def server(self) -> str | None:
        return self.base_url

    # -- what the scorer asks

    def context_length(self) -> int | None:
        return self._max_model_len

    def _chat(self, messages: Messages) -> Messages:
        """The messages as sent: the system turn folded into the first user turn once the template refused it."""
        return fold_system(messages) if self._fold_system else messages

    def _refused_system(self, messages: Messages, response: httpx.Response | None = None) -> bool:
        """Whether this refusal was the chat template's of a system turn; if so, fold from now on."""
        if self._fold_system or not messages or messages[0]["role"] != "system":
            return False
        if response is not None and not _refuses_system_turn(response.text):
            return False
        self._fold_system = True
        log.info("the model's chat template takes no system turn: the rubric goes into the first user turn, as "
                 "in training")
        return True

    def _post_chat(self, url: str, action: str, body: dict[str, Any], messages: Messages) -> httpx.Response:
        """POST `body` with the chat; once more, folded, when the template has just refused the system turn."""
        response = self._request("POST", url, action, json={**body, "messages": self._chat(messages)})
        if response.status_code >= 400 and self._refused_system(messages, response):
            response = self._request("POST", url, action, json={**body, "messages": self._chat(messages)})
        return response

    def count_prompt_tokens(self, messages: Messages) -> int:
        with self._lock:
            if self._counter is None:
                self._counter = self._find_counter()
                log.info("counting prompt tokens with %s", self._counter[0])
        kind, count = self._counter
        return count(messages)

    def _find_counter(self) -> tuple[str, Any]:
        """The most exact way this server (or the user's tokenizer folder) can count a chat's tokens."""
        if self._tokenizer_dir is not None:
            return "the tokenizer in " + str(self._tokenizer_dir), self._tokenizer_counter()
        probe = [{"role": "user", "content": "a b"}]
        chat = self._try_json("POST", f"{self.root}/tokenize",
                              json={"model": self.model, "messages": probe, "add_generation_prompt": True})
        if isinstance(chat, dict) and isinstance(chat.get("count"), int) and chat["count"] > 0:
            return "the server's chat tokenizer (/tokenize)", self._server_chat_count
        rendered = self._try_json("POST", f"{self.root}/apply-template", json={"model": self.model, "messages": probe})
        if isinstance(rendered, dict) and isinstance(rendered.get("prompt"), str):
            tokens = self._try_json("POST", f"{self.root}/tokenize", json=_template_tokenize(rendered["prompt"]))
            if isinstance(tokens, dict) and isinstance(tokens.get("tokens"), list) and tokens["tokens"]:
                return "the server's chat template and tokenizer (/apply-template, /tokenize)", self._template_count
        text_endpoints = (
            (f"{self.root}/extras/tokenize/count", lambda text: {"input": text}, lambda r: r.get("count")),
            (f"{self.root}/tokenize", lambda text: {"content": text}, lambda r: len(r.get("tokens") or [])),
        )
        for url, body, read in text_endpoints:
            answer = self._try_json("POST", url, json=body("a b"))
            if isinstance(answer, dict) and isinstance(read(answer), int) and read(answer) > 0:
                return f"the server's text tokenizer ({urlsplit(url).path})", self._text_counter(url, body, read)
        log.warning("the server at %s has no tokenize endpoint hcp knows and no --tokenizer was given: counting "
                    "prompt tokens as UTF-8 bytes, an upper bound, so a transcript that would fit may be refused",
                    self.base_url)
        return "UTF-8 bytes (an upper bound)", lambda messages: _allowance(messages) + sum(
            len(m["content"].encode("utf-8")) for m in messages)

    def _try_json(self, method: str, url: str, **kwargs: Any) -> Any:
        """A probe's answer, or None for any error: a missing endpoint is an answer too."""
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _server_chat_count(self, messages: Messages) -> int:
        body = {"model": self.model, "add_generation_prompt": True, "chat_template_kwargs": TEMPLATE_VARIABLES}
        response = self._post_chat(f"{self.root}/tokenize", "tokenize", body, messages)
        return int(self._json(response, "tokenize")["count"])

    def _template_count(self, messages: Messages) -> int:
        """llama-server's exact count: the chat rendered by its own template (/apply-template), then tokenized as
        it tokenizes a chat's prompt (special tokens added and parsed)."""
        body = {"model": self.model, "chat_template_kwargs": TEMPLATE_VARIABLES}
        rendered = self._json(self._post_chat(f"{self.root}/apply-template", "tokenize", body, messages), "tokenize")
        return len(self._json(self._request("POST", f"{self.root}/tokenize", "tokenize",
                                            json=_template_tokenize(rendered["prompt"])), "tokenize")["tokens"])

    def _text_counter(self, url: str, body: Any, read: Any) -> Any:
        def count(messages: Messages) -> int:
            total = _allowance(messages)
            for message in messages:
                answer = self._json(self._request("POST", url, "tokenize", json=body(message["content"])), "tokenize")
                total += int(read(answer))
            return total

        return count

    def _tokenizer_counter(self) -> Any:
        from hcp.errors import ModelNotFoundError as Missing

        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_dir)
        except (OSError, ValueError, ImportError) as exc:
            raise Missing(f"--tokenizer {self._tokenizer_dir}: cannot load a tokenizer from it "
                          f"({type(exc).__name__}) — give the model's folder (tokenizer.json, tokenizer_config.json)"
                          ) from None

        def count(messages: Messages) -> int:
            from jinja2 import TemplateError

            try:
                ids = tokenizer.apply_chat_template(self._chat(messages), add_generation_prompt=True, tokenize=True,
                                                **TEMPLATE_VARIABLES)
            except TemplateError as exc:
                if not (_refuses_system_turn(str(exc)) and self._refused_system(messages)):
                    raise BackendError(f"--tokenizer {self._tokenizer_dir}: its chat template failed: {exc}") from None
                ids = tokenizer.apply_chat_template(self._chat(messages), add_generation_prompt=True, tokenize=True,
                                                **TEMPLATE_VARIABLES)
            # transformers 5 returns a BatchEncoding (a mapping, not a dict), 4 a list of ids
            return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

        return count

    def schema_form(self) -> str:
        """Which way of asking for schema-constrained output this server honours (found once, by a probe)."""
        with self._lock:
            if self._schema_form is None:
                self._schema_form = self._probe_schema_forms()
                log.info("the server at %s honours %s for JSON-schema output", self.base_url, self._schema_form)
        return self._schema_form

    def _probe_schema_forms(self) -> str:
        tried = []
        for name, fields in SCHEMA_FORMS:
            body = {"model": self.model, "messages": PROBE_MESSAGES, "max_tokens": PROBE_TOKENS, "temperature": 0,
                    "seed": 0, "stream": False, **fields(PROBE_SCHEMA)}
            response = self._request("POST", f"{self.base_url}/chat/completions", "a schema probe", json=body)
            if response.status_code in (401, 403):
                self._json(response, "a schema probe")  # raises with the API-key advice
            if response.status_code == 200:
                try:
                    choice = response.json()["choices"][0]
                    if _probe_answered(choice["message"]["content"], choice.get("finish_reason")):
                        return name
                except (ValueError, KeyError, IndexError, TypeError):
                    pass
                tried.append(f"{name}: ignored")
            else:
                tried.append(f"{name}: HTTP {response.status_code}")
        raise BackendError(f"the server at {self.base_url} does not constrain answers to a JSON schema "
                           f"({'; '.join(tried)}) — hcp needs that to guarantee a valid rating; use vLLM, SGLang, "
                           "llama-server or llama-cpp-python's server")

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        form = dict(SCHEMA_FORMS)[self.schema_form()]
        body = {"model": self.model, "temperature": options.temperature, "seed": options.seed,
                "max_tokens": options.num_predict, "stream": False, **form(schema),
                "chat_template_kwargs": TEMPLATE_VARIABLES}  # the date training rendered (hcp.chat)
        if self._llama_server:
            # The penalty the embedded engine and Ollama apply (llama.cpp's, over the last 64 tokens: the server's
            # default window too); llama-server's own default is 1.0, under which a small model's answers repeat
            # and run about twice as long. Other servers are not sent it: vLLM's repetition_penalty is the same
            # formula over every token of prompt and answer, not the same rater.
            body["repeat_penalty"] = options.repeat_penalty
        fields = score_fields(schema)
        if fields:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        started = time.perf_counter()
        response = self._post_chat(f"{self.base_url}/chat/completions", "a rating", body, messages)
        if response.status_code == 400 and _is_context_error(response):
            raise ContextOverflowError(
                f"the server at {self.base_url} refused the prompt as longer than its context "
                f"({_error_message(response, messages)}) — use a model or server setting with a longer context")
        if response.status_code >= 400 and response.status_code not in (401, 403):  # those: API-key advice below
            raise BackendError(f"the server at {self.base_url} answered a rating with HTTP {response.status_code}: "
                               f"{_error_message(response, messages)}")
        reply = self._json(response, "a rating")
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"the server at {self.base_url} sent a reply without choices[0].message — check "
                               "that it is an OpenAI-compatible chat completions API") from None
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        return Generation(
            text=text, done_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=self._token_count(usage, "prompt_tokens"),
            output_tokens=self._token_count(usage, "completion_tokens"),
            seconds=round(time.perf_counter() - started, 3),
            score_distribution=self._distribution(choice, fields) if fields else None,
        )

    def _token_count(self, usage: dict[str, Any], key: str) -> int:
        """usage[key] as a count; 0 (not reported) for anything but a whole number, with a warning: the prompt was
        counted before sending, and a count the server garbles is no reason to lose the rating."""
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if value is not None:
            log.warning("the server at %s reported usage.%s that is not a token count (%s); taken as not reported",
                        self.base_url, key, type(value).__name__)
        return 0

    def _distribution(self, choice: dict[str, Any], fields: dict[str, list[int]]) -> dict[str, dict[int, float]] | None:
        """Per score field, its scores' probabilities from choices[0].logprobs.content (servers report them from
        the raw logits, before the schema's constraint: renormalised over the score tokens); None without."""
        content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        try:
            steps = [TokenStep(str(e["token"]), float(e["logprob"]),
                               tuple((str(t["token"]), float(t["logprob"])) for t in e.get("top_logprobs") or ()))
                     for e in content or ()]
        except (KeyError, TypeError, ValueError):
            steps = []
        found = distributions_from_steps(steps, list(fields), sorted({s for v in fields.values() for s in v}))
        if found.keys() != fields.keys():
            log.warning("the server at %s sent no usable logprobs for %d of %d dimensions: this rating has no score "
                        "probabilities", self.base_url, len(fields) - len(found), len(fields))
            return None
        return found

    def close(self) -> None:
        self._client.close()


def _probe_answered(content: str, finish_reason: str | None) -> bool:
    """Whether a probe's answer obeys PROBE_SCHEMA: it is {"ok": 7}, or, cut off at the probe's token limit, the
    start of it. A constrained model that knows little (a small fine-tune) may spend its tokens on the whitespace
    the grammar allows between tokens; a server that ignores the schema writes words, never the start of it."""
    if finish_reason != "length":
        return json.loads(content) == {"ok": 7}
    written = "".join(content.split())
    return bool(written) and PROBE_ANSWER.startswith(written)


def _template_tokenize(prompt: str) -> dict[str, Any]:
    """llama-server's /tokenize of a rendered chat as its chat completions tokenize it: special tokens added and
    parsed (the template's own markers are special tokens)."""
    return {"content": prompt, "add_special": True, "parse_special": True}


def _allowance(messages: Messages) -> int:
    """The chat template's share of a prompt when only the text can be counted: role markers, separators and
    a BOS token, bounded generously per message."""
    return TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + 1


ECHO_WINDOW = 16  # characters: an error text sharing this much with the prompt may be quoting it


def _error_message(response: httpx.Response, messages: Messages | None = None) -> str:
    """The server's own error text, one line and short. Validation errors of some servers quote the request's
    fields; a text that shares any ECHO_WINDOW characters with the messages is withheld, not shown."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        text = error.get("message") if isinstance(error, dict) else (error or body.get("detail") or body)
    except (ValueError, AttributeError):
        text = response.text
    text = " ".join(str(text).split())[:200]
    contents = [" ".join(m["content"].split()) for m in messages or []]
    windows = {text[i:i + ECHO_WINDOW] for i in range(max(0, len(text) - ECHO_WINDOW + 1))}
    if any(window in content for window in windows for content in contents):
        return "(the server's message is withheld: it quotes the prompt)"
    return text


# How servers word "the prompt is longer than my context" in an HTTP 400: vLLM and OpenAI ("maximum context
# length", context_length_exceeded), llama-server ("request (N tokens) exceeds the available context size (M tokens)",
# type exceed_context_size_error; older builds: "the request exceeds the available context size, try increasing it").
CONTEXT_ERRORS = ("context_length_exceeded", "maximum context length", "context length",
                  "exceeds the available context size", "exceed_context_size_error")


def _is_context_error(response: httpx.Response) -> bool:
    text = response.text.lower()
    return any(marker in text for marker in CONTEXT_ERRORS)


def _refuses_system_turn(text: str) -> bool:
    """A chat template's refusal of a system turn, as servers pass it on ("System role not supported")."""
    text = text.lower()
    return "system role" in text or ("system" in text and "not supported" in text)
