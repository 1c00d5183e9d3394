"""A confidence threshold with a guarantee (selective rating): the lowest confidence at or above which the model's
ratings agree with the humans within one point on every dimension at least `target` of the time, with probability
at least 1 - `risk` over the draw of the calibration set.

A rating's confidence is the lowest of its dimensions' confidences (each the probability of the chosen score,
rounded as `scoring.confidence.summarize` rounds it), so a rating is kept (rated without review) exactly when
`needs_review` does not flag it for low confidence under `scoring.confidence_threshold` = the threshold.

The test, after "Trust or Escalate" (Jung et al., ICLR 2025) and Learn-then-Test (Angelopoulos et al., 2021):

- Candidates: the calibration set's distinct confidences, from the highest (strictest) down. The first candidate
  is the highest one that keeps at least `min_kept(target, risk)` ratings — fewer could not pass even if every
  one agreed. The sequence is fixed by the confidences alone, before any agreement with the humans is looked at.
- At each candidate t, of the n ratings kept (confidence >= t), k agree. Under H0 "agreement among ratings at or
  above t is below target", k is at most Binomial(n, target), so p = P(Binomial(n, target) >= k) is a valid
  p-value (the exact binomial tail; p <= risk exactly when the one-sided 1 - risk Clopper-Pearson lower bound of
  the agreement is at or above the target).
- Fixed-sequence testing: go down while p <= risk, stop at the first candidate that fails; the threshold is the
  last one accepted. Testing in an order fixed in advance and stopping at the first failure keeps the chance of
  accepting any threshold whose agreement is below target within `risk` (the family-wise error), so choosing the
  lowest accepted one spends nothing.

When the strictest candidate already fails (or too few ratings have a confidence to test any), no threshold holds:
the result says so with the numbers, and a config is not written from it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hcp.errors import DataError


def check_level(name: str, value: float) -> float:
    """A target agreement or a risk: strictly between 0 and 1."""
    if not 0 < value < 1:
        raise DataError(f"{name} must be between 0 and 1 (both excluded), got {value:g}")
    return value


def min_kept(target: float, risk: float) -> int:
    """The fewest ratings that can show agreement >= target at this risk: even all of them agreeing gives
    p = target^n, which is <= risk only from n = ceil(log(risk) / log(target))."""
    return max(1, math.ceil(math.log(risk) / math.log(target) - 1e-12))


def binomial_tail(k: np.ndarray, n: np.ndarray, target: float) -> np.ndarray:
    """P(Binomial(n, target) >= k), elementwise (1 where k <= 0)."""
    from scipy.stats import binom

    return np.where(k <= 0, 1.0, binom.sf(k - 1, n, target))


def lower_bound(k: np.ndarray, n: np.ndarray, risk: float) -> np.ndarray:
    """The one-sided 1 - risk Clopper-Pearson lower bound of a proportion k / n (0 where k is 0)."""
    from scipy.stats import beta

    with np.errstate(invalid="ignore"):
        return np.where(k > 0, beta.ppf(risk, k, n - k + 1), 0.0)


@dataclass(frozen=True)
class Curve:
    """Per candidate threshold, from the strictest down: what is kept, how far it agrees, and the test."""

    threshold: np.ndarray  # the distinct confidences, descending
    kept: np.ndarray  # ratings with confidence >= threshold
    agree: np.ndarray  # of them, those within one point of the humans on every dimension
    p_value: np.ndarray
    bound: np.ndarray  # one-sided 1 - risk lower bound of the agreement


def curve(confidence: Sequence[float], agrees: Sequence[bool], target: float, risk: float) -> Curve:
    c = np.asarray(confidence, dtype=float)
    ok = np.asarray(agrees, dtype=bool)
    order = np.argsort(-c, kind="stable")
    c, ok = c[order], ok[order]
    kept_so_far = np.arange(1, c.size + 1)
    agree_so_far = np.cumsum(ok)
    last = np.r_[c[1:] != c[:-1], True] if c.size else np.zeros(0, dtype=bool)  # the last rating of each value
    kept, agree = kept_so_far[last], agree_so_far[last]
    return Curve(c[last], kept, agree, binomial_tail(agree, kept, target), lower_bound(agree, kept, risk))


def fixed_sequence(p_values: Sequence[float], kept: Sequence[int], risk: float, least: int) -> tuple[int | None, int]:
    """(index of the last accepted candidate or None, index where testing started): candidates in order, the
    first tested the first to keep `least` ratings or more, stopping at the first whose p-value exceeds risk."""
    start = next((i for i, n in enumerate(kept) if n >= least), len(kept))
    chosen = None
    for i in range(start, len(kept)):
        if p_values[i] > risk:
            break
        chosen = i
    return chosen, start


def calibrate(confidence: Sequence[float], agrees: Sequence[bool], target: float, risk: float) -> dict[str, Any]:
    """The guaranteed threshold and the curve of coverage against agreement (see the module's docstring)."""
    check_level("the target agreement", target)
    check_level("the risk", risk)
    n = len(confidence)
    least = min_kept(target, risk)
    result: dict[str, Any] = {"target": target, "risk": risk, "n": n, "min_kept": least, "threshold": None,
                              "coverage": None, "agreement": None, "bound": None, "kept": 0, "tested": 0,
                              "curve": [], "verdict": ""}
    if n == 0:
        result["verdict"] = "no rating has score probabilities: nothing to calibrate a threshold on"
        return result
    cur = curve(confidence, agrees, target, risk)
    chosen, start = fixed_sequence(cur.p_value, cur.kept, risk, least)
    result["curve"] = [{"threshold": float(t), "coverage": int(m) / n, "kept": int(m), "agreement": int(a) / int(m),
                        "bound": float(b), "p_value": float(p),
                        "tested": start <= i <= (start if chosen is None else chosen + 1),
                        "accepted": chosen is not None and start <= i <= chosen}
                       for i, (t, m, a, p, b) in enumerate(zip(cur.threshold, cur.kept, cur.agree, cur.p_value,
                                                               cur.bound, strict=True))]
    result["tested"] = sum(row["tested"] for row in result["curve"])
    overall = int(cur.agree[-1]) / n
    if n < least:
        result["verdict"] = (f"too few ratings: {n} with a confidence, and even if all agreed, {least} or more are "
                             f"needed to show {target:.0%} agreement at risk {risk:g} — no threshold holds; label more "
                             f"(agreement of all {n}: {overall:.1%})")
    elif chosen is None:
        first = result["curve"][start]
        result["verdict"] = (f"no threshold holds: at the strictest ({first['threshold']:.3f}, the top "
                             f"{first['kept']} ratings) agreement is {first['agreement']:.1%}, lower bound "
                             f"{first['bound']:.1%} < {target:.0%} (p = {first['p_value']:.3f} > {risk:g}); "
                             f"agreement of all {n}: {overall:.1%} — lower the target, or label more")
    else:
        row = result["curve"][chosen]
        result.update(threshold=row["threshold"], coverage=row["coverage"], agreement=row["agreement"],
                      bound=row["bound"], kept=row["kept"])
        result["verdict"] = (f"threshold {row['threshold']:.3f}: {row['kept']} of {n} ratings ({row['coverage']:.0%}) "
                             f"at or above it, {row['agreement']:.1%} agree within one point on every dimension, "
                             f"at least {target:.0%} with probability {1 - risk:.0%} (lower bound {row['bound']:.1%})")
    return result


# --- storing the threshold in a config file -----------------------------------------------------------------

KEY = "confidence_threshold"
CONFIG_SUFFIXES = (".yaml", ".yml")


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_config_target(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse, before any work, a --write-config that would overwrite an input or cannot be written."""
    for given in inputs:
        if same_file(out, Path(given)) or out.resolve() == Path(given).resolve():
            raise DataError(f"--write-config {out} is one of the inputs ({given}) — write the config to a new file; "
                            "hcp never overwrites what it reads")
    if out.suffix.lower() not in CONFIG_SUFFIXES:
        raise DataError(f"--write-config {out}: name the file .yaml — it is a config, as --config takes")
    if out.is_dir():
        raise DataError(f"--write-config {out}: is a folder — give a .yaml file to write")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"--write-config {out}: cannot write there ({folder} is not a folder you can write to) — "
                        "choose a location you can write to")
    if out.exists() and not os.access(out, os.W_OK):
        raise DataError(f"--write-config {out}: the file is not writable — choose another file")


def config_text(source: Path | None, threshold: float, comment: str) -> str:
    """The text of `source` (the --config given, else the default config) with `scoring.confidence_threshold`
    set, its comments and every other value kept: the line is changed in place (or added under `scoring:`). Where
    the file's layout defeats that (flow style), it is written from its parsed values instead, without comments.
    Either way the result is checked: it parses to the source's values but this one, and it loads as a config."""
    import yaml

    from hcp.config import DEFAULT_CONFIG_PATH, config_from_data

    path = source or DEFAULT_CONFIG_PATH
    text = path.read_text(encoding="utf-8-sig")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("scoring", {}), dict):
        raise DataError(f"{path}: not a config with a 'scoring' section — give --config a config file")
    wanted = {**data, "scoring": {**data.get("scoring", {}), KEY: threshold}}
    edited = _set_scoring_key(text, repr(float(threshold)), comment)
    try:
        ok = yaml.safe_load(edited) == wanted
    except yaml.YAMLError:
        ok = False
    if not ok:
        edited = f"# {comment}; written from {path.name}'s values (its layout kept no comments)\n" + \
            yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True)
    config = config_from_data(yaml.safe_load(edited), "the config to write")
    if config.scoring.confidence_threshold != threshold:  # pragma: no cover - the checks above make it so
        raise DataError("the written config would not hold the threshold")
    return edited


def _set_scoring_key(text: str, value: str, comment: str) -> str:
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if text.endswith("\r\n") else "\n"
    top = [i for i, line in enumerate(lines) if re.match(r"scoring\s*:\s*(#.*)?$", line.rstrip("\r\n"))]
    if not top:
        tail = "" if not text or text.endswith("\n") else newline
        return f"{text}{tail}scoring:{newline}  {KEY}: {value}  # {comment}{newline}"
    start = top[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].strip() and not lines[i][0].isspace()
                and not lines[i].lstrip().startswith("#")), len(lines))
    children = [line for line in lines[start:end] if line.strip() and not line.lstrip().startswith("#")]
    indent = re.match(r"\s*", children[0]).group(0) if children else "  "
    for i in range(start, end):
        match = re.match(rf"({re.escape(indent)}{KEY}\s*:\s*)", lines[i])
        if match:
            lines[i] = f"{match.group(1)}{value}  # {comment}{newline}"
            return "".join(lines)
    lines.insert(start, f"{indent}{KEY}: {value}  # {comment}{newline}")
    return "".join(lines)


def write_config(out: Path, source: Path | None, threshold: float, comment: str) -> Path:
    """Write the config with the threshold (see `config_text`), atomically: a reader never sees half of it."""
    from hcp.files import atomic_write_text

    return atomic_write_text(out, config_text(source, threshold, comment))
