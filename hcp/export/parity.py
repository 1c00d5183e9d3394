"""Score-level parity: does the quantized GGUF rate like the model that was trained?

The tokens check (tokens.py) proves the exported model is given the prompt of training; this proves it answers it
with the same scores. On a fixed set of transcripts (the training run's validation transcripts, recorded in the
adapter folder, else hcp's sample conversations), the F16 GGUF writes an answer under the rating grammar. Both the
trained model (the merged safetensors in transformers, in the dtype it was trained in) and the quantized GGUF (in
llama.cpp) are then fed that same prompt and answer, token for token, and each dimension's score distribution is
read where the answer writes its score, as scoring reads it (hcp/scoring/backends/sampling.py). Per dimension:
the share of scores whose most likely score agrees, the mean absolute difference of the expected score, and the
largest KL divergence (trained || quantized); these decide the target. Then, for a type that meets it (or is
exported anyway), the quantized GGUF rates each transcript freely, and the share of its ratings equal to the F16
GGUF's is reported (llama.cpp against llama.cpp: the same engine, only the weights differ).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hcp.config import Config
from hcp.errors import ExportError, HcpError
from hcp.rubric import Rubric

log = logging.getLogger(__name__)

DEFAULT_TRANSCRIPTS = 20
SAMPLE_SEED = 2026  # the sample set's seed: not the default 42 that `hcp data sample` trains on
TIE = 1e-4  # two scores whose trained probabilities are this close are both "most likely" (float noise, F16 vs F32)


@dataclass(frozen=True)
class ParityTarget:
    """What a quantization must keep for the export to pass."""

    min_agreement: float = 0.98  # share of dimension scores whose most likely score agrees
    max_mean_delta: float = 0.10  # mean |expected score, quantized - trained|

    def met(self, agreement: float, mean_delta: float) -> bool:
        return agreement >= self.min_agreement - 1e-9 and mean_delta <= self.max_mean_delta + 1e-9

    def __str__(self) -> str:
        return f"agreement >= {self.min_agreement:.0%}, mean |Δ expected| <= {self.max_mean_delta:.2f}"


@dataclass
class _Case:
    """One transcript as the reference saw it: the F16 GGUF's answer, where it writes each score, and the trained
    model's distribution there."""

    transcript: str
    messages: list[dict[str, str]]
    answer: list[int]
    positions: list[Any]  # ScorePosition: where the answer writes each score, and the tokens allowed there
    scores: dict[str, int]  # what the F16 GGUF rated
    trained: dict[str, dict[int, float]]


@dataclass
class Reference:
    """What every quantization is compared with, computed once per export."""

    source: str  # "validation" (the training run's held-out transcripts) or "sample"
    cases: list[_Case]
    seconds: float
    dimensions: list[str]


@dataclass
class ParityReport:
    quant: str
    source: str
    transcripts: int
    dimension_scores: int  # distributions compared (transcripts x dimensions whose score the F16 answer wrote)
    agreement: float
    mean_abs_expected: float
    max_kl: float
    per_dimension: dict[str, dict[str, float]]
    # Free ratings (None where not run: a type below the target, unless asked): the share whose every score equals
    # the F16 GGUF's, and the share of dimension scores equal to its.
    ratings_equal: float | None
    scores_equal: float | None
    seconds: float  # this quantization's check (the reference's cost is in `reference_seconds`)
    seconds_per_transcript: float  # this quantization's whole check, per transcript
    seconds_per_rating: float | None  # its free ratings (None where not run)
    reference_seconds: float
    target: dict[str, float]
    passed: bool
    accepted_loss: bool = False
    tried: list[dict[str, Any]] = field(default_factory=list)  # --quant auto: the types that fell short, in order

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"{self.quant}: most likely score agrees on {self.agreement:.1%} of {self.dimension_scores}, mean "
                f"|Δ expected| {self.mean_abs_expected:.3f}, max KL {self.max_kl:.4f}; {free_line(self.to_json())}")


def parity_transcripts(model: Path, count: int) -> tuple[list[str], str]:
    """(transcripts, source): the first `count` of the training run's validation transcripts when `model` is an
    adapter folder that records them, else `count` of hcp's sample conversations."""
    from hcp.train.trainer import VALIDATION_FILE

    recorded = model / VALIDATION_FILE
    if recorded.is_file():
        texts = []
        for number, line in enumerate(recorded.read_text(encoding="utf-8").splitlines(), 1):
            try:
                texts.append(json.loads(line)["transcript"])
            except (ValueError, KeyError, TypeError):
                raise ExportError(f"{recorded}:{number}: not a JSON object with a 'transcript' — the file is written "
                                  "by 'hcp train'; remove it to check parity on the sample set") from None
        if texts:
            return texts[:count], "validation"
    from hcp.data.sample import generate_samples

    return [s["transcript"] for s in generate_samples(count, seed=SAMPLE_SEED)], "sample"


def _score_options(config: Config) -> Any:
    from hcp.scoring.score import ScoreOptions

    return ScoreOptions(num_ctx=config.model.num_ctx, temperature=config.model.temperature,
                        repeat_penalty=config.model.repeat_penalty, answer_tokens=config.model.answer_tokens)


def _rate(backend: Any, transcript: str, rubric: Rubric, config: Config) -> tuple[list[dict[str, str]], Any]:
    """The first answer under the grammar (no retry: a retry changes seed and temperature, so two models'
    retries would not be comparable) and the messages it answered."""
    from hcp.scoring.score import TranscriptScoring

    try:
        scoring = TranscriptScoring(transcript, backend, rubric, _score_options(config))
    except HcpError as exc:  # a transcript too long for the context: its lengths only, never its text
        raise ExportError(f"parity check: {exc}") from None
    return scoring.messages, backend.generate(scoring.messages, rubric.json_schema, scoring.next_options())


def trained_dtype(model: Path) -> str:
    """The dtype the adapter was trained in (training_config.json's run.dtype), float32 when none is recorded."""
    path = model / "training_config.json"
    if path.is_file():
        from hcp.export.merge import read_json_object

        run = read_json_object(path).get("run")
        if isinstance(run, dict) and run.get("dtype") in ("float32", "bfloat16", "float16"):
            return str(run["dtype"])
    return "float32"


def build_reference(source: Path, wide: Path, transcripts: list[str], origin: str, rubric: Rubric,
                    config: Config, dtype: str, threads: int | None) -> Reference:
    """The F16 GGUF's answers, and the trained model's score distributions where those answers write scores."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hcp.scoring.backends.llama_cpp import LlamaCppBackend
    from hcp.train.trainer import prompt_ids

    started = time.perf_counter()
    f16 = LlamaCppBackend(wide, num_ctx=config.model.num_ctx, threads=threads)
    tokenizer = AutoTokenizer.from_pretrained(source)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # training's choice too (train/trainer.py)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)).to(device).eval()
    cases = []
    shared = _SharedPrefix(model, device)
    try:
        for number, transcript in enumerate(transcripts, 1):
            messages, generation = _rate(f16, transcript, rubric, config)
            prompt = f16.prompt_tokens(messages)
            if prompt != prompt_ids(tokenizer, messages):  # tokens.py checked one prompt; each is checked here
                raise ExportError(f"parity transcript {number}: llama.cpp tokenizes its rating prompt differently "
                                  "from training — please report this with the base model's name")
            positions = f16.score_positions(rubric.json_schema, generation.output_ids)
            trained: dict[str, dict[int, float]] = {}
            if positions:
                # prompt + answer up to the last score: the logits at each token, the prefix's from its cache
                ids = prompt + generation.output_ids[:positions[-1].index]
                rows = [len(prompt) + position.index - 1 for position in positions]
                logits = shared.logits(ids, f16._shared_prefix(messages), rows)
                for position, row in zip(positions, logits, strict=True):
                    trained[position.field] = position.distribution(row.tolist())
            scores = {p.field: p.score for p in positions}
            cases.append(_Case(transcript, messages, generation.output_ids, positions, scores, trained))
    finally:
        f16.close()
    return Reference(origin, cases, round(time.perf_counter() - started, 2), [d.name for d in rubric.dimensions])


class _SharedPrefix:
    """The trained model's logits over a prompt and answer, with the KV cache of the tokens every prompt starts with
    (the rubric: half of a short transcript's prompt) computed once and reused, as llama.cpp's backend does."""

    def __init__(self, model: Any, device: str) -> None:
        import inspect

        self.model, self.device = model, device
        self.prefix: list[int] = []
        self.cache: Any = None
        # The forward's argument names, which transformers 5.x renamed (past_key_values -> cache)
        takes = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in takes else "past_key_values"
        self.keeps_rows = "logits_to_keep" in takes

    def logits(self, ids: list[int], prefix: list[int], rows: list[int]) -> Any:
        """[len(rows), vocab] logits at the given rows of `ids` (the logits after ids[row]); the prefix's tokens
        come from its cache when `ids` starts with it. Only those rows go through the output head (a 49k-token
        vocabulary's head is a fifth of a small model's work at every token)."""
        import torch

        if prefix and prefix != self.prefix:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True,
                                 **self._keep([len(prefix) - 1]))
            self.cache = out["cache"] if "cache" in out else out["past_key_values"]  # renamed in transformers 5.x
            self.prefix = list(prefix)
        offset = len(self.prefix) if self.prefix and ids[: len(self.prefix)] == self.prefix else 0
        keep = self._keep([row - offset for row in rows])
        with torch.no_grad():
            if offset:  # a copy of the prefix's cache, which the pass extends (transformers' own way to reuse one)
                out = self.model(input_ids=torch.tensor([ids[offset:]], device=self.device), use_cache=True,
                                 **{self.cache_argument: copy.deepcopy(self.cache)}, **keep)
            else:
                out = self.model(input_ids=torch.tensor([ids], device=self.device), **keep)
        logits = out.logits[0].float().cpu()
        return logits if keep else logits[[row - offset for row in rows]]

    def _keep(self, rows: list[int]) -> dict[str, Any]:
        """The argument that asks the model for the logits of these rows only, where its forward takes one."""
        import torch

        return {"logits_to_keep": torch.tensor(rows, device=self.device)} if self.keeps_rows else {}


def kl_divergence(p: dict[int, float], q: dict[int, float]) -> float:
    """KL(p || q) in nats over p's scores; a score p gives weight that q gives none makes it infinite."""
    total = 0.0
    for score, weight in p.items():
        if weight > 0:
            other = q.get(score, 0.0)
            if other <= 0:
                return math.inf
            total += weight * math.log(weight / other)
    return max(total, 0.0)


def _agrees(trained: dict[int, float], quantized: dict[int, float]) -> bool:
    """The quantized model's most likely score is the trained model's (or ties with it within TIE)."""
    pick = max(quantized, key=lambda s: quantized[s])
    return trained.get(pick, 0.0) >= max(trained.values()) - TIE


def check_parity(reference: Reference, gguf: Path, quant: str, rubric: Rubric, config: Config,
                 target: ParityTarget, threads: int | None, *, free: bool | None = None) -> ParityReport:
    """Compare the quantized GGUF with the reference: the teacher-forced distributions, which decide the target;
    then its free ratings against the F16 GGUF's — with `free` None only when the target is met (a type that falls
    short is not exported, and its free ratings would cost most of the check), always with True, never with False."""
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend
    from hcp.scoring.confidence import expected_score

    started = time.perf_counter()
    backend = LlamaCppBackend(gguf, num_ctx=config.model.num_ctx, threads=threads)
    rows: dict[str, list[tuple[bool, float, float]]] = {name: [] for name in reference.dimensions}
    equal: tuple[float, float, float] | None = None
    try:
        for case in reference.cases:
            _, forced = backend.forced_distributions(case.messages, rubric.json_schema, case.answer, case.positions)
            for name, trained in case.trained.items():
                quantized = forced[name]
                rows[name].append((_agrees(trained, quantized),
                                   abs(expected_score(quantized) - expected_score(trained)),
                                   kl_divergence(trained, quantized)))
        every = [row for dimension in rows.values() for row in dimension]
        if not every:
            raise ExportError(f"parity check: the F16 GGUF wrote no score in any of {len(reference.cases)} answers "
                              "— the model has not learned the rating format; train it longer, or export with "
                              "--no-parity-check")
        agreement = sum(r[0] for r in every) / len(every)
        mean_delta = sum(r[1] for r in every) / len(every)
        passed = target.met(agreement, mean_delta)
        if free or (free is None and passed):
            equal = _free_ratings(backend, reference, rubric, config)
    finally:
        backend.close()
    cases, seconds = len(reference.cases), time.perf_counter() - started
    return ParityReport(
        quant=quant, source=reference.source, transcripts=cases, dimension_scores=len(every),
        agreement=round(agreement, 4), mean_abs_expected=round(mean_delta, 4),
        max_kl=round(max(r[2] for r in every), 6),
        per_dimension={name: {"agreement": round(sum(r[0] for r in d) / len(d), 4),
                              "mean_abs_expected": round(sum(r[1] for r in d) / len(d), 4),
                              "max_kl": round(max(r[2] for r in d), 6)} for name, d in rows.items() if d},
        ratings_equal=None if equal is None else round(equal[0], 4),
        scores_equal=None if equal is None else round(equal[1], 4),
        seconds_per_rating=None if equal is None else round(equal[2], 3),
        seconds=round(seconds, 2), seconds_per_transcript=round(seconds / cases, 3),
        reference_seconds=reference.seconds, target=asdict(target), passed=passed)


def _free_ratings(backend: Any, reference: Reference, rubric: Rubric, config: Config
                  ) -> tuple[float, float, float]:
    """(share of ratings, share of dimension scores) of the model's free ratings equal to the F16 GGUF's, and the
    seconds per rating. Each rating is the one `hcp score` makes, decoded token by token: the same engine, the same
    arithmetic as the F16 GGUF's answer, so the F16 GGUF checked against itself gives the same ratings exactly."""
    ratings = scores = written = 0
    started = time.perf_counter()
    for case in reference.cases:
        _, generation = _rate(backend, case.transcript, rubric, config)
        own = {p.field: p.score for p in backend.score_positions(rubric.json_schema, generation.output_ids)}
        ratings += own == case.scores
        scores += sum(own.get(name) == score for name, score in case.scores.items())
        written += len(case.scores)
    cases = len(reference.cases)
    return ratings / cases, (scores / written if written else 0.0), (time.perf_counter() - started) / cases


def free_line(parity: dict[str, Any]) -> str:
    """The free ratings' part of a report's line (a report's JSON: the Modelfile's header reads it from there)."""
    if parity.get("ratings_equal") is None:
        return "free ratings not compared (below the target)"
    return (f"free ratings equal to the F16 GGUF's {parity['ratings_equal']:.0%} ({parity['scores_equal']:.0%} of "
            "their scores)")


def failure_message(report: ParityReport, target: ParityTarget, larger: str | None) -> str:
    fix = f"export with a larger type (--quant {larger})" if larger else "the model itself may be unstable here"
    return (f"parity check failed: {report.line()} — below the target ({target}) on {report.transcripts} "
            f"{report.source} transcripts; {fix}, or pass --accept-parity-loss to export it anyway")

