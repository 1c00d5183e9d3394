"""The Ollama address: a malformed --host or OLLAMA_HOST is one line naming it, for every command that talks to the
daemon; a host off this machine is refused unless the user allows it (patient data, or a model trained on it,
would leave the machine), and allowed with --allow-remote or model.allow_remote."""

from __future__ import annotations

import json
import logging
import socket
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import hcp.scoring.backends.ollama as ollama_backend
from hcp.cli import cli
from hcp.errors import BackendError
from hcp.export.register import register
from hcp.scoring.backends.ollama import RemoteHostError, check_remote, is_loopback, parse_host
from tests.fakes import GOOD_ANSWER
from tests.ollama_double import ForcedReply

TRANSCRIPT = "RD: Hello, how are you today? Patient: Tired, my sugar is high."
LABELLED = {"id": "a", "transcript": TRANSCRIPT, "empathy": 3, "clarity": 4, "accuracy": 3, "professionalism": 4}
EXAMPLE = "e.g. 127.0.0.1:11434 or http://localhost:11434"
REMOTE = "10.255.255.1"  # only ever a string here: every test below is refused before anything is sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A transcript file, a labelled file and a config that allows remote hosts, in tmp_path (the cwd)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "transcript": TRANSCRIPT}) + "\n")
    (tmp_path / "labelled.jsonl").write_text(json.dumps(LABELLED) + "\n")
    (tmp_path / "allow.yaml").write_text("model:\n  allow_remote: true\n")
    return tmp_path


# Every command that may talk to the daemon, in the mode that does (auto included), with the address left out.
COMMANDS = {
    "score (ollama)": ["score", TRANSCRIPT, "--backend", "ollama"],
    "score (auto)": ["score", TRANSCRIPT],
    "batch (auto)": ["batch", "in.jsonl", "--out", "out.jsonl"],
    "evaluate (auto)": ["evaluate", "--data", "labelled.jsonl", "--report", "report"],
    "export-ollama": ["export-ollama", "no-such-model", "--name", "r"],
}


# --- malformed addresses --------------------------------------------------------------------------------------

MALFORMED = [
    ("http://[::bad", "cannot read a host and port in it"),  # was: ValueError: Invalid IPv6 URL
    ("ht!tp://x", "the scheme must be http or https, not 'ht!tp'"),
    (":99999", "the port must be a number from 1 to 65535, not '99999'"),
    ("http://x:0", "the port must be a number from 1 to 65535, not '0'"),  # the client took 0 as 'no port'
    ("local host:11434", "it contains a space"),
    (" 127.0.0.1:11434", "it contains a space"),
    ("http://::1", "an IPv6 address goes in brackets"),
    ("http://", "no host after 'http://'"),
    ("127.0.0.1:11434?x=1", "it has a ?query or #fragment"),
    ("1.2.3.999", "'1.2.3.999' is not a host name or an IP address"),
]


def check_one_line(result, source: str, value: str, why: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert result.output.startswith(f"Error: {source} {value!r} is not an Ollama address: {why}")
    assert result.output.count("\n") == 1 and EXAMPLE in result.output


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("value, why", MALFORMED, ids=[v for v, _ in MALFORMED])
def test_a_malformed_host_flag_is_one_line_naming_it(files, command, value, why):
    result = CliRunner().invoke(cli, [*COMMANDS[command], "--host", value])
    check_one_line(result, "--host", value, why)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("value, why", MALFORMED[:4], ids=[v for v, _ in MALFORMED[:4]])
def test_a_malformed_ollama_host_variable_is_one_line_naming_it(files, monkeypatch, command, value, why):
    monkeypatch.setenv("OLLAMA_HOST", value)
    result = CliRunner().invoke(cli, COMMANDS[command])
    check_one_line(result, "OLLAMA_HOST", value, why)


@pytest.mark.parametrize("source", ["--host", "OLLAMA_HOST"])
@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_address_says_what_to_give(files, monkeypatch, command, source):
    if source == "--host":
        result = CliRunner().invoke(cli, [*COMMANDS[command], "--host", ""])
    else:
        monkeypatch.setenv("OLLAMA_HOST", "")
        result = CliRunner().invoke(cli, COMMANDS[command])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: {source} is empty — an Ollama address is host[:port]")
    assert result.output.count("\n") == 1 and EXAMPLE in result.output
    assert ("unset OLLAMA_HOST" in result.output) is (source == "OLLAMA_HOST")


def test_a_password_in_the_address_is_refused_without_showing_it(files):
    result = CliRunner().invoke(cli, [*COMMANDS["score (ollama)"], "--host", "http://me:s3cret@127.0.0.1:11434"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Error: --host: a user name or password in the Ollama address is not supported" in result.output
    assert "s3cret" not in result.output


def test_an_address_that_is_not_used_is_not_checked(files, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "http://[::bad")
    result = CliRunner().invoke(cli, ["score", TRANSCRIPT, "--backend", "llama-cpp", "--model", "missing.gguf"])
    assert "GGUF file not found" in result.output
    result = CliRunner().invoke(cli, ["export-ollama", "no-such-model", "--no-create"])
    assert "not a folder" in result.output


@pytest.mark.parametrize("given, expected", [
    ("127.0.0.1", "http://127.0.0.1:11434"),
    (":56789", "http://127.0.0.1:56789"),  # the client's reading: a port alone is this machine
    ("http://1.2.3.4", "http://1.2.3.4:80"),  # as the client: http:// without a port is port 80
    ("https://example.com:56789/path/", "https://example.com:56789/path"),
    ("[0001:002:003:0004::1]:56789/path", "http://[1:2:3:4::1]:56789/path"),
    ("HTTP://LocalHost:5", "http://localhost:5"),
])
def test_well_formed_addresses_are_normalised_as_the_client_does(given, expected):
    assert parse_host(given, "--host") == expected
    assert parse_host(expected, "--host") == expected  # the client parses our URL again: a fixed point


# --- hosts off this machine -----------------------------------------------------------------------------------


def test_loopback_is_127_8_and_ipv6_1_and_localhost_only():
    assert all(is_loopback(u) for u in ("http://127.0.0.1:1", "http://127.200.0.9:1", "http://[::1]:1",
                                        "http://localhost:1", "http://LOCALHOST:1"))
    assert not any(is_loopback(u) for u in ("http://10.0.0.1:1", "http://foo.localhost:1", "http://myhost:1",
                                            "http://[2001:db8::1]:1", "http://127.0.0.1.nip.io:1",
                                            "http://localhost.:1", "http://127.0.0.1.:1"))


@pytest.mark.parametrize("value", ["localhost.", "LOCALHOST.:11434", "http://127.0.0.1.:11434", "ollama_box.lan."])
def test_a_host_name_ending_in_a_dot_is_refused_before_dns_can_place_it_anywhere(files, value):
    # 'localhost.' passed as this machine and was then looked up in DNS, which may answer with any address.
    result = CliRunner().invoke(cli, [*COMMANDS["score (ollama)"], "--host", value])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: --host {value!r} is not an Ollama address")
    assert "ending in a dot is looked up in DNS" in result.output and result.output.count("\n") == 1


def test_check_remote_refuses_then_allows(caplog):
    caplog.set_level(logging.INFO, logger="hcp")
    with pytest.raises(RemoteHostError) as refused:
        check_remote(f"http://{REMOTE}:11434", False, source="OLLAMA_HOST", sends="data", instead="else stay")
    assert str(refused.value) == (
        f"the Ollama host http://{REMOTE}:11434 (from OLLAMA_HOST) is not on this machine, and hcp would send it data "
        "— to allow that, pass --allow-remote, or set model.allow_remote: true in a --config file; else stay")
    check_remote(f"http://{REMOTE}:11434", True, source="--host", sends="data", instead="")
    assert "is not on this machine; sending it data, as allowed" in caplog.text
    check_remote("http://127.0.0.1:11434", False, source="--host", sends="data", instead="")  # local: no question


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("source", ["--host", "OLLAMA_HOST"])
def test_a_remote_host_is_refused_saying_how_to_allow_it(files, monkeypatch, command, source):
    args = [*COMMANDS[command], "--host", REMOTE] if source == "--host" else COMMANDS[command]
    if source == "OLLAMA_HOST":
        monkeypatch.setenv("OLLAMA_HOST", REMOTE)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    sends = "the fine-tuned model (trained on patient data)" if command == "export-ollama" \
        else "transcripts (patient data)"
    assert result.output.startswith(f"Error: the Ollama host http://{REMOTE}:11434 (from {source}) is not on this "
                                    f"machine, and hcp would send it {sends} — to allow that, pass --allow-remote, "
                                    "or set model.allow_remote: true in a --config file; else ")
    assert result.output.count("\n") == 1


@pytest.fixture
def remote_double(ollama_double, monkeypatch, files):
    """The protocol double, seen as a host off this machine: is_loopback says no to every address, so the
    double (on 127.0.0.1, where test servers live) stands for a remote daemon."""
    monkeypatch.setattr(ollama_backend, "is_loopback", lambda url: False)
    ollama_double.reset()
    yield ollama_double
    ollama_double.reset()


@pytest.mark.parametrize("allow", [[], ["--allow-remote"], ["--config", "allow.yaml"]],
                         ids=["refused", "--allow-remote", "model.allow_remote"])
@pytest.mark.parametrize("mode", ["score", "batch"])
def test_a_remote_daemon_gets_nothing_unless_allowed(remote_double, files, mode, allow):
    remote_double.force_replies(ForcedReply(json.dumps(GOOD_ANSWER)))
    args = ["score", TRANSCRIPT, "--json"] if mode == "score" else ["batch", "in.jsonl", "--out", "out.jsonl"]
    result = CliRunner().invoke(cli, [*args, "--backend", "ollama", "--model", "smollm2", "--host", remote_double.url,
                                      *allow])
    if not allow:
        assert result.exit_code == 1 and "to allow that, pass --allow-remote" in result.output
        assert remote_double.requests == []  # refused before a single request, the probe's included
        return
    assert result.exit_code == 0, result.output
    assert len(remote_double.requests_to("/api/chat")) == 1
    if mode == "score":
        assert json.loads(result.stdout)["backend"] == "ollama"
    else:
        assert json.loads((files / "out.jsonl").read_text())["status"] == "ok"


def test_auto_mode_never_falls_back_silently_from_a_refused_remote_host(remote_double, files, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", remote_double.url)
    result = CliRunner().invoke(cli, ["score", TRANSCRIPT, "--threads", "1"])
    assert result.exit_code == 1 and "(from OLLAMA_HOST) is not on this machine" in result.output
    assert remote_double.requests == []


def test_register_refuses_a_remote_daemon_unless_allowed(remote_double, tmp_path):
    from tests.test_ollama_backend import sentencepiece_gguf

    gguf = sentencepiece_gguf(tmp_path / "m.gguf")
    spec = SimpleNamespace(name="remote-rater", gguf=gguf,
                           create_request=lambda digest: {"model": "remote-rater", "files": {"m.gguf": digest}})
    with pytest.raises(RemoteHostError, match=r"send it the fine-tuned model .* pass --allow-remote"):
        register(spec, remote_double.url, 30)
    assert remote_double.requests == []  # not even the blob's HEAD
    try:
        assert register(spec, remote_double.url, 30, allow_remote=True) is True
        assert "remote-rater:latest" in [m["name"] for m in remote_double.tags()["models"]]
    finally:
        remote_double.delete({"model": "remote-rater"})


def test_register_without_a_daemon_is_not_an_error(tmp_path):
    spec = SimpleNamespace(name="x", gguf=tmp_path / "m.gguf", create_request=lambda digest: {})
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert register(spec, f"127.0.0.1:{free_port()}", 5) is False
    with pytest.raises(BackendError, match="is not an Ollama address"):
        register(spec, "http://[::bad", 5)
