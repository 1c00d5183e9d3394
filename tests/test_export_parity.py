"""Export proven at the score level (hcp/export/parity.py): the quantized GGUF, fed the F16 GGUF's answers, gives
the trained model's score distributions, or the export fails with the figures and a larger type to use.

Real components throughout: the tiny Llama of tests/tiny.py in transformers, its GGUFs in llama.cpp. A quantization
is made to disagree by editing the quantized file's tensor data after the real quantizer wrote it (gguf-py's
reader, writable): the token embedding (tied to the output head) negated, so that every score's logit flips sign.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.config import load_config
from hcp.errors import ExportError
from hcp.export import quantize as quantize_module
from hcp.export.parity import ParityTarget, kl_divergence, parity_transcripts
from hcp.export.pipeline import ExportOptions, export_ollama
from tests.test_export import parse_modelfile

SHORT = str(Path(__file__).parent / "data" / "short_answers.yaml")
TRANSCRIPTS = 2  # enough to compare 8 dimension scores; the tiny model's answers take a second each


SCALED_BLOCKS = {"Q4_0": 18, "Q5_0": 22, "Q8_0": 34}  # bytes per block of 32 weights, its f16 scale first


def flip_tensor(gguf: Path, name: str, factor: float = -16.0) -> None:
    """Multiply every weight of tensor `name` by `factor`, in place: in a block of one f16 scale and its quants,
    the scale; an F16 value itself. On the tied token embedding, -16 turns each logit into -16 times itself (the
    input side is undone by the first RMSNorm but for the sign): the least likely score becomes the most, sharply."""
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(gguf, "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    kind = tensor.tensor_type.name
    if kind in SCALED_BLOCKS:
        blocks = tensor.data.reshape(tensor.data.shape[0], -1, SCALED_BLOCKS[kind])  # [rows, blocks, bytes]
        scales = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16) * np.float16(factor)
        blocks[:, :, :2] = scales.view(np.uint8).reshape(blocks[:, :, :2].shape)
    elif kind == "F16":
        values = tensor.data.view(np.float16)
        values[...] = values * np.float16(factor)
    else:
        raise AssertionError(f"{name} is {kind}: extend flip_tensor")
    reader.data.flush()


@pytest.fixture
def disagreeing_q8_0(monkeypatch):
    """Quantize for real, then negate the quantized file's token embedding."""
    real = quantize_module.quantize_gguf

    def quantize_then_perturb(source, target, quant="q4_k_m", threads=None):
        result = real(source, target, quant, threads)
        flip_tensor(Path(target), "token_embd.weight")
        return result

    monkeypatch.setattr(quantize_module, "quantize_gguf", quantize_then_perturb)


def options(tmp_path: Path, quant: str, **changes) -> ExportOptions:
    return ExportOptions(**{"name": "parity", "quant": quant, "out_dir": tmp_path / "out", "create": False,
                            "threads": 1, "modelfiles_dir": tmp_path / "modelfiles",
                            "parity_transcripts": TRANSCRIPTS, "smoke_check": False, **changes})


def test_a_clean_f16_export_rates_as_the_trained_model_does(tiny_llama_dir, tmp_path):
    result = export_ollama(tiny_llama_dir, load_config(SHORT), options(tmp_path, "f16"))
    parity = result.parity
    assert parity["passed"] and parity["source"] == "sample" and parity["transcripts"] == TRANSCRIPTS
    assert parity["dimension_scores"] == 4 * TRANSCRIPTS  # every F16 answer wrote every score
    assert parity["agreement"] == 1.0 and parity["ratings_equal"] == 1.0  # the F16 GGUF is its own reference
    assert parity["mean_abs_expected"] < 1e-3 and parity["max_kl"] < 1e-4  # F16 weights against F32: float noise
    header = parse_modelfile(result.modelfile.read_text())
    assert "# score parity: most likely score agrees with the trained model's on 100.0% of 8 scores" \
        in result.modelfile.read_text(), header


def test_the_teacher_forced_reading_is_the_one_scoring_makes(tiny_llama_dir, tmp_path):
    """Fed its own answer, a GGUF gives at each score position the distribution it gave while writing it: the
    positions are the ones the sampler read (an off-by-one would read both models at the same wrong place)."""
    from hcp.rubric import Rubric
    from hcp.scoring.backends import GenerateOptions
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend

    result = export_ollama(tiny_llama_dir, load_config(SHORT), options(tmp_path, "f16", parity_check=False))
    rubric = Rubric.from_config(load_config(SHORT))
    backend = LlamaCppBackend(result.gguf, num_ctx=2048, threads=1)
    try:
        messages = rubric.messages("RD: How is the low-salt diet going?\nPatient: Hard, I miss crisps.")
        written = backend.generate(messages, rubric.json_schema, GenerateOptions(0.0, 42, 2048, 400))
        positions, forced = backend.forced_distributions(messages, rubric.json_schema, written.output_ids)
        # the parity check hands over the positions the reference found: the same reading
        _, given = backend.forced_distributions(messages, rubric.json_schema, written.output_ids, positions)
    finally:
        backend.close()
    assert set(forced) == set(written.score_distribution) == {d.name for d in rubric.dimensions}
    for name, distribution in written.score_distribution.items():
        assert forced[name] == pytest.approx(distribution, abs=1e-4), name
    assert given == forced
    assert [p.score for p in positions] == [rubric.validate_json(written.text).model_dump()[p.field]
                                            for p in positions]


def test_a_quantization_that_disagrees_fails_the_export_with_its_figures(tiny_llama_dir, tmp_path,
                                                                         disagreeing_q8_0):
    with pytest.raises(ExportError) as failed:
        export_ollama(tiny_llama_dir, load_config(SHORT), options(tmp_path, "q8_0", parity_transcripts=1))
    message = str(failed.value)
    assert message.startswith("parity check failed: q8_0: most likely score agrees on ")
    assert "below the target (agreement >= 98%, mean |Δ expected| <= 0.10)" in message
    assert "of 4, mean" in message and "on 1 sample transcripts" in message
    assert "--quant f16" in message and "--accept-parity-loss" in message
    assert "free ratings not compared (below the target)" in message  # not exported: not worth its free ratings
    agreement = float(message.split("agrees on ")[1].split("%")[0])
    assert agreement < 30, message  # the sign of every score's logit flipped: the least likely became the most
    assert not list((tmp_path / "out").glob("*.gguf")) and not (tmp_path / "out" / "Modelfile").exists()


@pytest.mark.slow
def test_accepting_the_loss_exports_it_and_says_so(tiny_llama_dir, tmp_path, disagreeing_q8_0):
    result = export_ollama(tiny_llama_dir, load_config(SHORT), options(tmp_path, "q8_0", accept_parity_loss=True))
    assert result.gguf.name == "parity.Q8_0.gguf" and result.parity["accepted_loss"]
    assert not result.parity["passed"] and result.parity["agreement"] < 0.3
    assert result.parity["ratings_equal"] is not None  # exported, so its free ratings were compared
    assert "BELOW the target, accepted with --accept-parity-loss" in result.modelfile.read_text()


def test_auto_keeps_the_smallest_type_that_meets_the_target(tiny_llama_dir, tmp_path, monkeypatch):
    """Only the 4-bit types are made to disagree: auto tries them, removes them, and keeps q5_k_m."""
    real = quantize_module.quantize_gguf

    def quantize(source, target, quant="q4_k_m", threads=None):
        result = real(source, target, quant, threads)
        if quant.startswith("q4"):
            flip_tensor(Path(target), "token_embd.weight")
        return result

    monkeypatch.setattr(quantize_module, "quantize_gguf", quantize)
    result = export_ollama(tiny_llama_dir, load_config(SHORT), options(tmp_path, "auto"))
    assert result.gguf.name == "parity.Q5_K_M.gguf" and result.parity["quant"] == "q5_k_m"
    assert [t["quant"] for t in result.parity["tried"]] == ["q4_k_s", "q4_k_m"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.gguf")) == ["parity.Q5_K_M.gguf"]
    (auto,) = [detail for label, _, detail in result.steps if label == "auto"]
    assert auto.startswith("chose q5_k_m: the smallest type meeting the target") and "q4_k_s agreed on" in auto


def test_skipping_the_check_is_recorded(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # modelfiles/ is written in the working folder
    result = CliRunner().invoke(cli, ["export-ollama", str(tiny_llama_dir), "--name", "skipped", "--quant", "q8_0",
                                      "--out", str(tmp_path / "out"), "--no-create", "--no-parity-check",
                                      "--threads", "1", "--config", SHORT])
    assert result.exit_code == 0, result.output
    assert "# score parity: not checked (--no-parity-check)" in (tmp_path / "out" / "Modelfile").read_text()
    assert "parity" not in " ".join(line.split()[0] for line in result.output.splitlines() if line.strip())


def test_the_transcripts_are_the_training_runs_validation_set_when_recorded(tmp_path):
    (tmp_path / "validation.jsonl").write_text('{"line": 3, "id": null, "transcript": "RD: one"}\n'
                                               '{"line": 9, "id": "b", "transcript": "RD: two"}\n')
    assert parity_transcripts(tmp_path, 1) == (["RD: one"], "validation")
    texts, source = parity_transcripts(tmp_path / "elsewhere", 3)
    assert source == "sample" and len(set(texts)) == 3
    (tmp_path / "validation.jsonl").write_text("not json\n")
    with pytest.raises(ExportError, match=r"validation.jsonl:1: not a JSON object"):
        parity_transcripts(tmp_path, 1)


@pytest.mark.parametrize("p, q, expected, why", [
    ({1: 0.5, 2: 0.5}, {1: 0.5, 2: 0.5}, 0.0, "the same distribution"),
    ({1: 1.0}, {1: 0.5, 2: 0.5}, math.log(2), "certain against even: log 2"),
    ({1: 0.5, 2: 0.5}, {1: 1.0}, math.inf, "a score the quantized model rules out"),
])
def test_kl_divergence(p, q, expected, why):
    assert kl_divergence(p, q) == pytest.approx(expected), why


def test_the_target(tmp_path):
    target = ParityTarget()
    assert target.met(0.98, 0.10) and not target.met(0.975, 0.0) and not target.met(1.0, 0.11)
