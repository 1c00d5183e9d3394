"""The Ollama backend: the local daemon, through the official `ollama` client.

One `/api/chat` per answer, with the rating's JSON schema as `format`. The daemon truncates a prompt that
does not fit `num_ctx` without a word, so prompts are counted before they are sent. Ollama has no tokenize
endpoint; instead `/api/show` (verbose) gives the model's vocabulary, which we write into a vocab-only GGUF
(cached per model digest) and tokenize with llama.cpp, exactly as the daemon's runner does. The daemon renders
its own Go template, which we cannot run: its share of the prompt is bounded from above (see
`count_prompt_tokens`). Without a vocabulary (an old daemon, gguf-py missing) the count falls back to UTF-8
bytes, an upper bound.

Transcripts are patient data: nothing here logs message contents, and a host off this machine is refused
unless the user allows it (`allow_remote`). Redirects are not followed: a daemon's answer never sends a request
elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama

from hcp.errors import BackendError, ModelNotFoundError
from hcp.files import atomic_path
from hcp.scoring.backends import DIRECT, Backend, GenerateOptions, Generation, Messages
from hcp.scoring.confidence import TokenStep, distributions_from_steps, score_fields

log = logging.getLogger(__name__)

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_TIMEOUT = 600.0  # seconds: loading a 7B model and writing the longest answer on a CPU takes minutes
CONNECT_TIMEOUT = 10.0  # a daemon that does not accept a connection in 10 s is not going to
PROBE_TIMEOUT = 2.0
MIN_VERSION = (0, 5, 8)  # integer enums and ranges in a JSON-schema `format` are enforced from 0.5.8
LOGPROBS_VERSION = (0, 12, 11)  # /api/chat answers `logprobs` / `top_logprobs` from 0.12.11
TOP_LOGPROBS = 20  # the most alternatives the daemon gives per token: every score token, unless very unlikely

# Prompt counting: the template's share of the prompt, per message. With the template known: its literal
# text (every branch, once per message: a message renders at most one pass of it), the role's name, and
# SEAM_TOKENS for the places where the template's text meets the message's (a BPE merge across a seam can
# cost a token either side). Without it: a flat allowance, more than any chat format we know of spends.
SEAM_TOKENS = 4
UNKNOWN_TEMPLATE_TOKENS = 32
BOS_TOKENS = 1

# Tokenizer keys of a GGUF, typed as llama.cpp reads them (JSON from /api/show has lost the GGUF types).
VOCAB_PREFIX = "tokenizer.ggml."
_ARRAY_ITEM_TYPES = {"scores": "FLOAT32", "token_type": "INT32", "precompiled_charsmap": "UINT8"}


# --- host ---------------------------------------------------------------------------------------------------

HOST_FORMAT = ("an Ollama address is host[:port] or http(s)://host[:port][/path], e.g. 127.0.0.1:11434 or "
               "http://localhost:11434")
ALLOW_REMOTE = "pass --allow-remote, or set model.allow_remote: true in a --config file"
SENDS_TRANSCRIPTS = "transcripts (patient data)"
INSTEAD_OF_REMOTE = "else use a daemon on this machine (--host 127.0.0.1:11434) or --backend llama-cpp"
TRAILING_DOT = ("a name ending in a dot is looked up in DNS, which may place it off this machine — write it "
                "without the final dot (localhost, 127.0.0.1)")
_NETLOC = re.compile(r"^(?:\[(?P<ipv6>[^\[\]]*)\]|(?P<name>[^:\[\]]*))(?::(?P<port>.*))?$")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


class OllamaHostError(BackendError):
    """--host or OLLAMA_HOST is not an address the client can use."""


class RemoteHostError(BackendError):
    """The Ollama host is off this machine and the user has not allowed sending data there."""


def resolve_host(host: str | None) -> str:
    """The daemon's URL: `host` (--host), else $OLLAMA_HOST, else 127.0.0.1:11434, normalised as the `ollama`
    client normalises it (no scheme: http and port 11434; http:// without a port: 80; https://: 443; ':port' alone:
    127.0.0.1). Anything the client would choke on or silently misread is an OllamaHostError naming its source."""
    if host is not None:
        return parse_host(host, "--host")
    env = os.environ.get("OLLAMA_HOST")
    return DEFAULT_HOST if env is None else parse_host(env, "OLLAMA_HOST")


def host_source(host: str | None) -> str:
    """Where resolve_host(host) took the address from, for messages."""
    if host is not None:
        return "--host"
    return "OLLAMA_HOST" if os.environ.get("OLLAMA_HOST") is not None else "the default"


def parse_host(value: str, source: str) -> str:
    """`value` (from `source`, for the message) as a URL; the client has no public parser, and its private one
    lets through what it cannot connect to (an unclosed '[', a port over 65535) or quietly drops (a password)."""

    def bad(why: str) -> OllamaHostError:
        return OllamaHostError(f"{source} {value!r} is not an Ollama address: {why} — {HOST_FORMAT}")

    if not value.strip():
        unset = ", or unset OLLAMA_HOST for the default 127.0.0.1:11434" if source == "OLLAMA_HOST" else ""
        raise OllamaHostError(f"{source} is empty — {HOST_FORMAT}{unset}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise bad("it contains a space or a control character")
    scheme, sep, rest = value.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise bad(f"the scheme must be http or https, not {scheme!r}")
        port = 80 if scheme == "http" else 443
    else:
        scheme, rest, port = "http", value, 11434
    netloc, slash, path = rest.partition("/")
    if sep and not netloc:
        raise bad(f"no host after '{scheme}://'")
    if "@" in netloc:  # the client would drop it without a word; the message leaves it out of the terminal
        raise OllamaHostError(f"{source}: a user name or password in the Ollama address is not supported — "
                              f"{HOST_FORMAT}")
    if "?" in rest or "#" in rest:
        raise bad("it has a ?query or #fragment, which an address has not")
    match = _NETLOC.match(netloc)
    if match is None:
        raise bad("cannot read a host and port in it (an IPv6 address goes in brackets: [::1]:11434)")
    if match["port"] is not None:
        if ":" in match["port"]:
            raise bad("an IPv6 address goes in brackets: [::1]:11434")
        if not match["port"].isdecimal() or not 1 <= int(match["port"]) <= 65535:
            raise bad(f"the port must be a number from 1 to 65535, not {match['port']!r}")
        port = int(match["port"])
    if match["ipv6"] is not None:
        try:
            hostname = f"[{ipaddress.IPv6Address(match['ipv6']).compressed}]"
        except ValueError:
            raise bad(f"[{match['ipv6']}] is not an IPv6 address") from None
    else:
        hostname = match["name"].lower() or "127.0.0.1"  # ':11434' alone is this machine, as in the client
        if hostname.endswith("."):
            raise bad(TRAILING_DOT)
        dotted_numbers = all(part.isdecimal() for part in hostname.rstrip(".").split("."))
        if not _HOSTNAME.match(hostname) or dotted_numbers and not _is_ipv4(hostname):
            raise bad(f"{match['name']!r} is not a host name or an IP address")
    path = path.strip("/") if slash else ""
    return f"{scheme}://{hostname}:{port}" + (f"/{path}" if path else "")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_loopback(url: str) -> bool:
    """True when `url` points at this machine: localhost, 127.0.0.0/8, ::1 (and 0.0.0.0 / ::, which a client
    reaches on this machine; OLLAMA_HOST=0.0.0.0 is how many users make the daemon listen everywhere). Any other
    name may resolve anywhere, '*.localhost' included (only some resolvers keep those on this machine), and so may
    a name with a trailing dot ('localhost.', '127.0.0.1.'), which the resolver looks up in DNS."""
    hostname = (urlsplit(url).hostname or "").lower()  # 'localhost.' is a DNS name: no dot is stripped
    if hostname == "localhost":
        return True
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return False  # a DNS name: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def check_remote(url: str, allowed: bool, *, source: str, sends: str, instead: str) -> None:
    """Refuse a host off this machine unless the user allowed it: what hcp `sends` there is patient data, or a
    model trained on it. `source` names where the address came from; `instead` says what else the user can do."""
    if is_loopback(url):
        return
    if not allowed:
        raise RemoteHostError(f"the Ollama host {url} (from {source}) is not on this machine, and hcp would send it "
                              f"{sends} — to allow that, {ALLOW_REMOTE}; {instead}")
    log.info("Ollama host %s is not on this machine; sending it %s, as allowed", url, sends)


# --- daemon version -----------------------------------------------------------------------------------------


_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a daemon version such as '0.5.7', '0.12.11-rc1' or 'v0.6'; None if unreadable.
    A pre-release counts as its release: the features we check for land before the final tag."""
    match = _VERSION.match(text.strip())
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def warn_if_old(version: str, host: str) -> bool:
    """Warn (and return True) when the daemon is too old to enforce the rating schema's integer enums."""
    parsed = parse_version(version)
    if parsed is None:
        log.info("Ollama at %s reports version %r, which hcp cannot read; not checking it", host, version)
        return False
    if parsed == (0, 0, 0):  # a build from source reports 0.0.0: assume it is current
        return False
    if parsed >= MIN_VERSION:
        return False
    wanted = ".".join(map(str, MIN_VERSION))
    log.warning("Ollama %s at %s is older than %s: it does not enforce integer enums and ranges in the rating "
                "schema, so scores may fall outside the rubric (hcp re-validates and retries) — update Ollama",
                version, host, wanted)
    return True


# --- the template's share of the prompt ---------------------------------------------------------------------


_ACTION = re.compile(r"\{\{(-)?.*?(-)?\}\}", re.S)


def template_literals(template: str) -> str:
    """The literal text of an Ollama (Go) template: every action `{{ ... }}` removed, with `{{-` / `-}}`
    trimming the whitespace beside them as Go does. All branches are kept, so this is at least the text one
    pass of the template renders around the messages' own contents."""
    pieces: list[str] = []
    position, trim_next = 0, False
    for action in _ACTION.finditer(template):
        text = template[position:action.start()]
        text = text.lstrip() if trim_next else text
        pieces.append(text.rstrip() if action.group(1) else text)
        position, trim_next = action.end(), bool(action.group(2))
    tail = template[position:]
    pieces.append(tail.lstrip() if trim_next else tail)
    return "".join(pieces)


# --- the model's vocabulary, from /api/show -----------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hcp" / "vocab"


def _gguf_types(key: str, value: Any) -> tuple[str, str | None] | None:
    """The GGUF (type, array item type) names llama.cpp expects for a tokenizer key, or None to leave it out."""
    if isinstance(value, bool):
        return "BOOL", None
    if isinstance(value, int):
        return "UINT32", None  # token ids and counts: llama.cpp reads them as uint32 and checks the type
    if isinstance(value, float):
        return "FLOAT32", None
    if isinstance(value, str):
        return "STRING", None
    if not isinstance(value, list) or not value:
        return None  # null / []: arrays the daemon did not send
    item = _ARRAY_ITEM_TYPES.get(key.removeprefix(VOCAB_PREFIX))
    if item:
        return "ARRAY", item
    if all(isinstance(v, str) for v in value):
        return "ARRAY", "STRING"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "ARRAY", "INT32"
    return None


def has_vocabulary(model_info: Mapping[str, Any]) -> bool:
    tokens = model_info.get(VOCAB_PREFIX + "tokens")
    return isinstance(tokens, list) and len(tokens) > 0 and bool(model_info.get(VOCAB_PREFIX + "model"))


def write_vocab_gguf(model_info: Mapping[str, Any], path: Path, *, provenance: Mapping[str, str]) -> Path:
    """A GGUF with the model's architecture name and tokenizer keys and no tensors: enough for llama.cpp to load
    the vocabulary alone. Written to a temporary file first, so that a parallel run never reads half of it."""
    import gguf

    arch = str(model_info.get("general.architecture") or "llama")
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        for key, value in provenance.items():
            writer.add_string(f"hcp.vocab.{key}", value)
        for key, value in model_info.items():
            types = _gguf_types(key, value) if key.startswith(VOCAB_PREFIX) else None
            if types is not None:
                vtype, item = types
                writer.add_key_value(key, value, gguf.GGUFValueType[vtype],
                                     sub_type=gguf.GGUFValueType[item] if item else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
    return path


class TokenCounter:
    """Tokens of a text in a model's vocabulary; `exact` is False for an upper bound."""

    exact = False

    def __call__(self, text: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ByteCounter(TokenCounter):
    """Upper bound without a vocabulary: a token never covers less than one byte (byte-level BPE and
    SentencePiece with byte fallback both spell anything in at most one token per UTF-8 byte)."""

    def __call__(self, text: str) -> int:
        return len(text.encode("utf-8"))


class VocabCounter(TokenCounter):
    """Exact counts from a (vocab-only) GGUF, tokenized as the daemon's runner does: special tokens parsed."""

    exact = True

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        # Llama() makes a context even for a bare vocabulary and says so on stderr ("n_ctx_train (0)"); that
        # line means nothing here, so it is kept out of the user's terminal and only logged.
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            self._llm = Llama(model_path=str(path), vocab_only=True, n_ctx=8, n_batch=8, n_threads=1,
                              n_threads_batch=1, verbose=False)
        if captured.getvalue().strip():
            log.debug("llama.cpp on loading %s: %s", path.name, captured.getvalue().strip())
        self.path = path

    def __call__(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def close(self) -> None:
        self._llm.close()


# --- errors -------------------------------------------------------------------------------------------------


class OllamaNotRunningError(BackendError):
    """No daemon answered at the address: nothing there, or not yet started."""


@contextlib.contextmanager
def ollama_errors(host: str, action: str, timeout: float | None, model: str | None = None) -> Iterator[None]:
    """The client's exceptions, for any call to the daemon, as one-line hcp errors that say what to do."""
    try:
        yield
    except ollama.ResponseError as exc:
        if exc.status_code == 404 and model is not None:
            raise ModelNotFoundError(
                f"model '{model}' not found in Ollama at {host} — register it with 'hcp export-ollama "
                f"MODEL_DIR --name {model}', or 'ollama pull {model}' ('ollama list' shows what is there)") from None
        detail = " ".join(str(exc.error).split())[:300]
        hint = ("update Ollama (0.5.8 or newer understands JSON-schema formats) or check the model"
                if exc.status_code == 400 else "see the daemon's log (journalctl -u ollama, or "
                "~/.ollama/logs/server.log)")
        raise BackendError(f"Ollama at {host} answered {action} with HTTP {exc.status_code}: {detail} — "
                           f"{hint}") from None
    except httpx.TimeoutException:
        raise BackendError(
            f"Ollama at {host} did not answer {action} within {timeout:g} s — raise --timeout (loading "
            "a large model, or rating on a CPU, can take minutes)") from None
    except (ConnectionError, httpx.ConnectError):
        raise OllamaNotRunningError(f"Ollama is not running at {host} — start it with 'ollama serve', or use "
                                    "--backend llama-cpp") from None
    except json.JSONDecodeError:
        raise BackendError(f"Ollama at {host} sent a reply to {action} that is not JSON — check that "
                           "the host is an Ollama daemon") from None
    except httpx.TransportError as exc:
        raise BackendError(f"lost the connection to Ollama at {host} during {action} ({type(exc).__name__})"
                           " — check that the daemon still runs ('ollama ps')") from None


# --- the backend --------------------------------------------------------------------------------------------


def _full_name(model: str) -> str:
    """'hcp-rater' -> 'hcp-rater:latest', as the daemon names it in /api/tags."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


class OllamaBackend(Backend):
    name = "ollama"

    def __init__(
        self,
        model: str,
        *,
        host: str | None = None,
        timeout: float | None = None,
        keep_alive: str | float | None = None,
        cache_dir: Path | None = None,
        allow_remote: bool = False,
    ) -> None:
        """Connect to the daemon at `host` (else $OLLAMA_HOST, else 127.0.0.1:11434) and check that it runs and
        has `model`. `timeout`: seconds to wait for any one answer. `keep_alive`: how long the daemon keeps the
        model loaded after a call (None: the daemon's own setting). `cache_dir`: where vocabularies are kept.
        `allow_remote`: a host off this machine is refused (RemoteHostError) unless this is True."""
        self.model = model
        self.host = resolve_host(host)
        check_remote(self.host, allow_remote, source=host_source(host), sends=SENDS_TRANSCRIPTS,
                     instead=INSTEAD_OF_REMOTE)
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.keep_alive = keep_alive
        self.cache_dir = cache_dir or default_cache_dir()
        self._http_timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT))
        self._client = ollama.Client(host=self.host, timeout=self._http_timeout, follow_redirects=False, **DIRECT)
        self._counter: TokenCounter | None = None
        self._template_tokens: dict[str, int] = {}
        self.version = self._read_version()
        warn_if_old(self.version, self.host)
        with self._errors("show"):
            self._show = self._client.show(model)
        self.logprobs = self._has_logprobs()  # after the model is found: a missing one is the only message

    @classmethod
    def probe(cls, host: str | None, model: str, timeout: float = PROBE_TIMEOUT) -> bool:
        """True when a daemon answers at `host` within `timeout` seconds and has `model`; never raises."""
        url = resolve_host(host)
        try:
            with ollama.Client(host=url, timeout=timeout, follow_redirects=False, **DIRECT) as client:
                client.show(model)
        except (ollama.ResponseError, httpx.HTTPError, OSError, ValueError) as exc:  # OSError: ConnectionError
            log.debug("probe: no Ollama model %s at %s (%s)", model, url, type(exc).__name__)
            return False
        return True

    # -- talking to the daemon

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        with ollama_errors(self.host, action, self.timeout, self.model):
            yield

    def _raw_json(self, method: str, path: str, **kwargs: Any) -> Any:
        # The client (0.6) has no call for GET /api/version nor a `verbose` flag on show(): plain httpx, raising
        # the client's own ResponseError for an HTTP error, so that ollama_errors words both paths alike.
        response = httpx.request(method, self.host + path, timeout=self._http_timeout, follow_redirects=False,
                                 **DIRECT, **kwargs)
        if not response.is_success:
            raise ollama.ResponseError(response.text, response.status_code)
        return response.json()

    def _read_version(self) -> str:
        with self._errors("version"):
            try:
                return str(self._raw_json("GET", "/api/version").get("version", ""))
            except (ollama.ResponseError, ValueError) as exc:  # a proxy or an odd server: go on without it
                log.warning("Ollama at %s gave no version (%s); not checking it", self.host, type(exc).__name__)
                return ""

    def _has_logprobs(self) -> bool:
        """Whether the daemon (0.12.11+) and the client can give token log-probabilities: without them a rating
        has no score distribution, no confidence and no interval (the JSON says null)."""
        parsed = parse_version(self.version)
        if parsed is not None and parsed != (0, 0, 0) and parsed < LOGPROBS_VERSION:
            log.warning("Ollama %s at %s is older than %s: ratings come without score probabilities (no "
                        "confidence, interval or needs_review from them) — update Ollama for them", self.version,
                        self.host, ".".join(map(str, LOGPROBS_VERSION)))
            return False
        if "logprobs" not in inspect.signature(self._client.chat).parameters:
            log.warning("the installed ollama client does not pass logprobs: ratings come without score "
                        "probabilities — 'pip install -U ollama' for them")
            return False
        return True

    # -- what the scorer asks

    def context_length(self) -> int | None:
        info = self._show.modelinfo or {}
        value = info.get(f"{info.get('general.architecture')}.context_length")
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    def count_prompt_tokens(self, messages: Messages) -> int:
        """Tokens of the chat as the daemon will send it to the model, never fewer: the messages' own tokens
        (exact with the model's vocabulary) plus, per message, the template's literal text, the role's name and
        SEAM_TOKENS (UNKNOWN_TEMPLATE_TOKENS when the daemon gives no template), plus a BOS token."""
        count = self.token_counter
        literals = template_literals(self._show.template or "")
        total = BOS_TOKENS
        for message in messages:
            total += count(message["content"])
            if literals.strip():
                total += self._template_share(literals, message["role"]) + SEAM_TOKENS
            else:
                total += UNKNOWN_TEMPLATE_TOKENS
        return total

    def _template_share(self, literals: str, role: str) -> int:
        if role not in self._template_tokens:
            self._template_tokens[role] = self.token_counter(literals) + self.token_counter(role)
        return self._template_tokens[role]

    @property
    def token_counter(self) -> TokenCounter:
        """The model's vocabulary from the daemon, loaded once (built once per model digest); bytes without it."""
        if self._counter is None:
            self._counter = self._vocab_counter() or ByteCounter()
        return self._counter

    def _vocab_counter(self) -> TokenCounter | None:
        try:
            import gguf  # noqa: F401 - gguf-py writes the vocabulary file
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            return self._no_vocabulary(f"{exc.name} is not installed; 'pip install gguf' gives exact counts")
        digest = self._digest()
        path = self.cache_dir / f"{digest}.gguf" if digest else None
        if path is not None and path.is_file():
            with contextlib.suppress(ValueError, RuntimeError):
                return VocabCounter(path)
            log.info("vocabulary cache %s is unreadable; rebuilding it", path)
        with self._errors("show"):
            info = self._raw_json("POST", "/api/show", json={"model": self.model, "verbose": True}).get("model_info")
        if not isinstance(info, dict) or not has_vocabulary(info):
            return self._no_vocabulary("the daemon sent no tokenizer for it (an older Ollama leaves it out)")
        if path is None:  # no digest from /api/tags: name the file by the vocabulary itself
            tokenizer = {k: v for k, v in sorted(info.items()) if k.startswith(VOCAB_PREFIX)}
            path = self.cache_dir / f"{hashlib.sha256(json.dumps(tokenizer).encode()).hexdigest()[:32]}.gguf"
        started = time.perf_counter()
        try:
            write_vocab_gguf(info, path, provenance={"model": self.model, "digest": digest or ""})
        except (OSError, ValueError) as exc:  # a cache folder we cannot write, a key gguf-py will not take
            return self._no_vocabulary(f"cannot write {path} ({exc})")
        try:
            counter = VocabCounter(path)
        except (ValueError, RuntimeError) as exc:
            path.unlink(missing_ok=True)
            return self._no_vocabulary(f"llama.cpp could not load its vocabulary ({exc})")
        log.info("vocabulary of %s written to %s in %.2f s", self.model, path, time.perf_counter() - started)
        return counter

    def model_digest(self) -> str | None:
        return self._digest()

    def _digest(self) -> str | None:
        with self._errors("list"):
            models = self._client.list().models
        wanted = _full_name(self.model)
        for entry in models:
            if entry.model in (self.model, wanted) and entry.digest:
                return re.sub(r"[^0-9a-f]", "", entry.digest.removeprefix("sha256:").lower())[:64] or None
        return None

    def _no_vocabulary(self, why: str) -> None:
        log.warning("no vocabulary for %s from Ollama at %s: %s; counting prompt tokens as UTF-8 bytes, an upper "
                    "bound, so a transcript that would fit may be refused", self.model, self.host, why)
        return None

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        started = time.perf_counter()
        fields = score_fields(schema) if self.logprobs else {}
        extra: dict[str, Any] = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if fields else {}
        with self._errors("chat"):
            reply = self._client.chat(
                model=self.model, messages=messages, format=schema, stream=False, keep_alive=self.keep_alive,
                options={"temperature": options.temperature, "seed": options.seed, "num_ctx": options.num_ctx,
                         "num_predict": options.num_predict, "repeat_penalty": options.repeat_penalty}, **extra,
            )
        seconds = reply.total_duration / 1e9 if reply.total_duration else time.perf_counter() - started
        return Generation(
            text=reply.message.content or "", done_reason="length" if reply.done_reason == "length" else "stop",
            # Daemons before mid-2024 left prompt_eval_count out when the prompt was cached: 0 = not reported.
            prompt_tokens=reply.prompt_eval_count or 0, output_tokens=reply.eval_count or 0,
            seconds=round(seconds, 3), score_distribution=self._distribution(reply, fields) if fields else None,
        )

    def _distribution(self, reply: Any, fields: dict[str, list[int]]) -> dict[str, dict[int, float]] | None:
        """Per score field, its scores' probabilities from the reply's `logprobs` (taken before the schema's
        constraint, so renormalised over the score tokens); None when the reply has none for every field."""
        entries = getattr(reply, "logprobs", None)
        if not entries:
            log.warning("Ollama %s at %s sent no logprobs: this rating has no score probabilities", self.version,
                        self.host)
            return None
        steps = [TokenStep(e.token, e.logprob, tuple((t.token, t.logprob) for t in e.top_logprobs or ()))
                 for e in entries]
        found = distributions_from_steps(steps, list(fields), sorted({s for v in fields.values() for s in v}))
        if found.keys() != fields.keys():
            log.warning("Ollama's logprobs gave no score probabilities for %d of %d dimensions: this rating has "
                        "none", len(fields) - len(found), len(fields))
            return None
        return found

    def close(self) -> None:
        if self._counter is not None:
            self._counter.close()
        self._client.close()

