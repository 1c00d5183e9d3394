// hcp serve's page. Transcripts and model-written text are data: they are only ever set with textContent or
// as form values, never as HTML.
"use strict";

const state = { rubric: null, result: null, transcript: null, batch: null, me: null, pick: null, adjudicating: null };
const $ = (id) => document.getElementById(id);

// --- talking to the server -------------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem("hcp-token");
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function failure(response) {
  let detail = "";
  try { detail = (await response.json()).detail || ""; } catch (e) { detail = ""; }
  if (response.status === 401) $("token-panel").hidden = false;
  if (response.status === 503) {
    const after = response.headers.get("Retry-After");
    detail = (detail || "the server is busy") + (after ? " (try again in " + after + " s)" : "");
  }
  if (response.status === 413) detail = detail || "the file is too large for this server";
  return new ApiError(response.status, detail || ("the server answered " + response.status));
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  let response;
  try {
    response = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, "the server did not answer — is hcp serve still running?");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

function showError(id, error) {
  const box = $(id);
  box.textContent = error ? error.message : "";
  box.hidden = !error;
}

// --- start: the server, the rubric, the agreement ---------------------------------------------------------

async function start() {
  try {
    const health = await (await api("/health")).json();
    $("server").textContent = health.backend + " · " + health.model;
    state.rubric = await (await api("/rubric")).json();
    await loadReviewer();
    await loadAgreement();
  } catch (e) {
    $("server").textContent = e.message;
  }
}

// --- who is reviewing -------------------------------------------------------------------------------------
// A reviewer token names its reviewer (the server says whose it is); a server without reviewer tokens takes the
// name the page gives, asked once per tab.

function reviewerName() {
  return state.me && state.me.reviewer ? state.me.reviewer : sessionStorage.getItem("hcp-reviewer");
}

async function loadReviewer() {
  state.me = await (await api("/reviewers/me")).json();
  const named = reviewerName();
  $("reviewer-panel").hidden = Boolean(named) || state.me.by_token;
  $("reviewer").hidden = !named;
  $("reviewer").textContent = named ? "Reviewing as " + named + (state.me.reviewer ? " (your token)" : "") : "";
  $("queue-card").hidden = !state.me.queue;
}

$("reviewer-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("reviewer-name").value.trim();
  if (!name) return;
  sessionStorage.setItem("hcp-reviewer", name);
  $("reviewer-name").value = "";
  loadReviewer();
});

// The reviewer field of a body: the page's name where the server takes one; a token's reviewer is the server's.
function asReviewer(body) {
  const name = sessionStorage.getItem("hcp-reviewer");
  if (!(state.me && (state.me.reviewer || state.me.by_token)) && name) body.reviewer = name;
  return body;
}

// --- the review queue ---------------------------------------------------------------------------------------

$("queue-next").addEventListener("click", async () => {
  showError("queue-error", null);
  try {
    if (!state.rubric) state.rubric = await (await api("/rubric")).json();
    const query = asReviewer({}).reviewer ? "?reviewer=" + encodeURIComponent(asReviewer({}).reviewer) : "";
    const next = await (await api("/queue/next" + query)).json();
    showQueueProgress(next.progress);
    if (next.done) {
      $("queue-pick").textContent = "Nothing left: you have reviewed every transcript of the queue.";
      return;
    }
    $("transcript").value = next.transcript;
    state.transcript = next.transcript;
    state.result = next.result;
    state.pick = next.pick;
    $("queue-pick").textContent = "Transcript " + next.id + ": " + (next.pick === "random"
      ? "picked at random" : "the model was unsure or flagged it") + ".";
    showResult(state.result);
  } catch (e) {
    showError("queue-error", e);
  }
});

function showQueueProgress(progress) {
  if (!progress) return;
  $("queue-progress").textContent = progress.reviewed + " of " + progress.total + " reviewed by you · " +
    progress.left + " left";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("hcp-token", $("token").value.trim());
  $("token").value = "";
  $("token-panel").hidden = true;
  start();
});

// --- rating one transcript --------------------------------------------------------------------------------

$("transcript-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) $("transcript").value = await file.text();
});

$("rate").addEventListener("click", async () => {
  const transcript = $("transcript").value;
  showError("error", null);
  $("rate").disabled = true;
  $("progress").hidden = false;
  const started = Date.now();
  const tick = setInterval(() => {
    $("progress-text").textContent = "Rating… " + Math.round((Date.now() - started) / 1000) + " s";
  }, 500);
  try {
    if (!state.rubric) state.rubric = await (await api("/rubric")).json();
    const response = await api("/score", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ transcript }),
    });
    state.result = await response.json();
    state.transcript = transcript;
    state.pick = null;
    showResult(state.result);
  } catch (e) {
    showError("error", e);
  } finally {
    clearInterval(tick);
    $("progress").hidden = true;
    $("progress-text").textContent = "Rating…";
    $("rate").disabled = false;
  }
});

function levelText(dimension, score) {
  const levels = dimension.levels;
  if (levels[String(score)]) return score + ": " + levels[String(score)];
  const defined = Object.keys(levels).map(Number).sort((a, b) => a - b);
  const below = defined.filter((l) => l < score).pop();
  const above = defined.find((l) => l > score);
  if (below === undefined || above === undefined) return "";
  return score + ": between " + below + " (" + levels[String(below)] + ") and " + above + " (" +
    levels[String(above)] + ")";
}

function showResult(result) {
  const rubric = state.rubric;
  const bars = $("bars");
  bars.replaceChildren();
  for (const dimension of rubric.dimensions) {
    const original = result.rating[dimension.name];
    const row = document.createElement("div");
    row.className = "dim";
    row.dataset.dimension = dimension.name;

    const name = document.createElement("div");
    name.className = "name";
    name.textContent = dimension.name;
    const weight = document.createElement("span");
    weight.className = "weight";
    weight.textContent = dimension.description + " · weight " + Math.round(dimension.weight * 100) + "%";
    name.appendChild(weight);

    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    bar.appendChild(fill);

    const select = document.createElement("select");
    select.setAttribute("aria-label", dimension.name + " score");
    for (let s = rubric.score_min; s <= rubric.score_max; s++) {
      const option = document.createElement("option");
      option.value = String(s);
      option.textContent = s + " / " + rubric.score_max;
      select.appendChild(option);
    }
    select.value = String(original);

    const level = document.createElement("div");
    level.className = "level";
    const was = document.createElement("span");
    was.className = "was";

    const confidence = confidenceNote(result, dimension.name);
    const update = () => {
      const score = Number(select.value);
      const span = rubric.score_max - rubric.score_min;
      fill.style.width = (100 * (score - rubric.score_min + 1) / (span + 1)) + "%";
      level.textContent = levelText(dimension, score);
      const changed = score !== original;
      row.classList.toggle("changed", changed);
      was.textContent = changed ? " (model: " + original + ")" : "";
      level.append(was, confidence);
      updateOverall();
    };
    select.addEventListener("change", update);
    row.append(name, bar, select, level);
    appendEvidence(row, dimension, result);
    bars.appendChild(row);
    update();
  }
  showReviewFlag(result);
  showQuotedTranscript(result);
  $("reasoning").value = result.rating.reasoning;
  $("strengths").value = result.rating.strengths.join("\n");
  $("areas").value = result.rating.areas_for_improvement.join("\n");
  // The version that rated (the canary for its share of transcripts): shown when it says more than the model.
  const version = result.model_version && result.model_version !== result.model ? "version " +
    result.model_version + ": " : "";
  $("rated-by").textContent = "Rated by " + version + result.model + " (" + result.backend + ") in " +
    result.seconds.toFixed(1) + " s · " + result.prompt_tokens + " prompt + " + result.output_tokens +
    " answer tokens" + (result.attempts > 1 ? " · " + result.attempts + " attempts" : "");
  // Set where the rating was made by a model that is no rater (the embedded test model): said beside the scores.
  $("model-note").textContent = result.model_note || "";
  $("model-note").hidden = !result.model_note;
  $("save-status").textContent = "";
  $("result").hidden = false;
  updateOverall();
}

// --- evidence and confidence --------------------------------------------------------------------------------

function evidenceKeys() {
  return (state.rubric.evidence || {}).keys || {};
}

function quoteText(check) {
  return check.speaker ? check.speaker + ": " + check.quote : String(check.quote || "");
}

function confidenceNote(result, name) {
  const note = document.createElement("span");
  const confidence = result.confidence ? result.confidence[name] : null;
  if (confidence === null || confidence === undefined) return note;
  const low = (result.review_reasons || []).includes("low_confidence:" + name);
  note.className = "confidence" + (low ? " low" : "");
  const expected = result.expected ? result.expected[name] : null;
  note.textContent = " · the model's confidence " + Math.round(confidence * 100) + "%" +
    (expected === null || expected === undefined ? "" : ", expected score " + Number(expected).toFixed(1));
  return note;
}

// The model's quotes under their dimension, each with what the check against the transcript found (only a
// quote the server verified is ever shown as verified), and a box of the quotes the review will keep: the
// verified ones to start with. A training example needs at least one per dimension.
function appendEvidence(row, dimension, result) {
  if (!evidenceKeys()[dimension.name]) return;
  const problems = state.rubric.evidence.problems || {};
  const checks = (result.evidence || {})[dimension.name] || [];
  const list = document.createElement("ul");
  list.className = "quotes";
  for (const check of checks) {
    const item = document.createElement("li");
    const verified = check.verified === true;
    item.className = verified ? "verified" : "unverified";
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = verified ? "✓ line " + check.line : "not verified: " + (problems[check.problem] || "not checked");
    const quote = document.createElement("q");
    quote.textContent = quoteText(check);
    item.append(status, quote);
    if (verified && check.line) item.addEventListener("click", () => findLine(check.line));
    list.appendChild(item);
  }
  if (!checks.length) {
    const item = document.createElement("li");
    item.className = "unverified";
    item.textContent = "no quotes";
    list.appendChild(item);
  }
  const label = document.createElement("label");
  label.className = "evidence-label";
  label.textContent = "Quotes the review keeps for " + dimension.name +
    ", one per line ('Speaker: words', copied from the transcript)";
  const edit = document.createElement("textarea");
  edit.className = "evidence-edit";
  edit.rows = 2;
  edit.id = "evidence-" + dimension.name;
  label.htmlFor = edit.id;
  edit.value = checks.filter((c) => c.verified === true).map(quoteText).join("\n");
  row.append(list, label, edit);
}

function showReviewFlag(result) {
  const flag = $("review-flag");
  const reasons = (result.review_reasons || []).map((reason) => {
    const [kind, name] = reason.split(":");
    if (kind === "low_confidence") return "the model was unsure of " + name;
    if (kind === "unverified_evidence") return "a quote for " + name + " is not in the transcript";
    return reason;
  });
  flag.textContent = reasons.length ? "Worth a second look: " + reasons.join("; ") + "." : "";
  flag.hidden = !reasons.length;
}

// The transcript as hcp checked it (line endings normalised, trimmed), each line numbered, the turns that a
// verified quote comes from marked with the dimensions that quote them. The turns are the server's
// (result.transcript_turns: the parse the quotes were checked against); the page has no parser of its own.
function showQuotedTranscript(result) {
  const list = $("quoted-transcript");
  list.replaceChildren();
  if (!Object.keys(evidenceKeys()).length) {
    $("quoted-card").hidden = true;
    return;
  }
  const lines = state.transcript.replace(/\r\n?/g, "\n").trim().split("\n");
  const turns = result.transcript_turns || [];
  const dimsByLine = new Map();
  for (const [name, checks] of Object.entries(result.evidence || {})) {
    for (const check of checks) {
      if (check.verified !== true || !check.line) continue;
      const turn = turns.find((t) => t.first_line <= check.line && check.line <= t.last_line);
      const last = turn ? turn.last_line : check.line;
      for (let n = check.line; n <= last; n++) {
        if (!dimsByLine.has(n)) dimsByLine.set(n, new Set());
        dimsByLine.get(n).add(name);
      }
    }
  }
  lines.forEach((text, index) => {
    const item = document.createElement("li");
    item.dataset.line = String(index + 1);
    item.textContent = text;
    const names = dimsByLine.get(index + 1);
    if (names) {
      item.classList.add("quoted");
      const tags = document.createElement("span");
      tags.className = "tags";
      tags.textContent = [...names].join(" · ");
      item.appendChild(tags);
    }
    list.appendChild(item);
  });
  $("quoted-card").hidden = false;
}

function findLine(line) {
  const item = $("quoted-transcript").querySelector('li[data-line="' + line + '"]');
  if (!item) return;
  item.scrollIntoView({ block: "nearest" });
  item.classList.add("flash");
  setTimeout(() => item.classList.remove("flash"), 1500);
}

function reviewQuotes() {
  const quotes = {};
  for (const [name, key] of Object.entries(evidenceKeys())) {
    const edit = $("evidence-" + name);
    quotes[key] = edit ? edit.value.split("\n").map((s) => s.trim()).filter((s) => s.length > 0) : [];
  }
  return quotes;
}

function currentScores() {
  const scores = {};
  for (const row of $("bars").querySelectorAll(".dim")) {
    scores[row.dataset.dimension] = Number(row.querySelector("select").value);
  }
  return scores;
}

function updateOverall() {
  if (!state.result || !state.rubric) return;
  const scores = currentScores();
  let overall = 0;
  for (const d of state.rubric.dimensions) overall += d.weight * (scores[d.name] || 0);
  overall = Math.round(overall * 100) / 100;
  $("overall").textContent = overall.toFixed(2);
  $("overall-note").textContent = overall !== state.result.overall ? "(model: " + state.result.overall + ")" : "";
}

function lines(id) {
  return $(id).value.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);
}

// --- saving a review ---------------------------------------------------------------------------------------

$("save").addEventListener("click", async () => {
  const quotes = reviewQuotes();
  const missing = Object.keys(evidenceKeys()).filter((name) => !quotes[evidenceKeys()[name]].length);
  if (missing.length) {
    $("save-status").textContent = "Not saved: a training example quotes the transcript for every dimension — " +
      "copy the line(s) each score rests on into the quotes box of " + missing.join(", ");
    return;
  }
  const review = Object.assign({
    reasoning: $("reasoning").value.trim(),
    strengths: lines("strengths"),
    areas_for_improvement: lines("areas"),
  }, currentScores(), quotes);
  $("save").disabled = true;
  $("save-status").textContent = "Saving…";
  try {
    const response = await api("/reviews", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(asReviewer(Object.assign(
        { transcript: state.transcript, review, original: state.result }, state.pick ? { pick: state.pick } : {}))),
    });
    const saved = await response.json();
    const kind = { consensus: "; the training file holds the reviewers' consensus",
      disputed: "; the reviewers disagree by 2 or more: adjudicate it below" }[saved.training] || "";
    $("save-status").textContent = (saved.replaced ? "Updated" : "Saved") + " as training example " + saved.id +
      ", " + saved.reviewer + "'s review" + kind + " (" + saved.reviews + " in " + saved.file + ")";
    if (state.pick && state.me && state.me.queue) {
      const query = asReviewer({}).reviewer ? "?reviewer=" + encodeURIComponent(asReviewer({}).reviewer) : "";
      state.pick = null;
      showQueueProgress((await (await api("/queue" + query)).json()).progress);
    }
    await loadAgreement();
  } catch (e) {
    $("save-status").textContent = "Not saved: " + e.message;
  } finally {
    $("save").disabled = false;
  }
});

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function cellsRow(cells) {
  const row = document.createElement("tr");
  for (const text of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.appendChild(cell);
  }
  return row;
}

async function loadAgreement() {
  const agreement = await (await api("/reviews/agreement")).json();
  $("agreement-command").textContent = agreement.command;
  showReviewersAgreement(agreement);
  await loadDisputed();
  if (!agreement.n) return;
  $("agreement-summary").textContent = "The model's original ratings against " + agreement.n +
    " reviewed transcript(s): the same numbers as the command below.";
  const body = $("agreement").querySelector("tbody");
  body.replaceChildren();
  for (const [name, m] of Object.entries(agreement.metrics)) {
    const row = document.createElement("tr");
    const cells = [name, fixed(m.exact * 100, 0) + "%", fixed(m.within_one * 100, 0) + "%", fixed(m.mae, 2),
      fixed(m.spearman, 2), fixed(m.qwk, 2)];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
  $("agreement").hidden = false;
}

// The model against each reviewer and against their consensus (the overall score), and the reviewers' agreement
// with each other, per dimension.
function showReviewersAgreement(agreement) {
  const reviewers = Object.entries(agreement.reviewers || {});
  const body = $("agreement-reviewers").querySelector("tbody");
  body.replaceChildren();
  const overallRow = (label, n, metrics) => {
    const m = metrics.overall;
    return cellsRow([label, String(n), fixed(m.exact * 100, 0) + "%", fixed(m.within_one * 100, 0) + "%",
      fixed(m.mae, 2), fixed(m.qwk, 2)]);
  };
  if (agreement.n) body.appendChild(overallRow("consensus (the training file)", agreement.n, agreement.metrics));
  for (const [name, r] of reviewers) body.appendChild(overallRow(name, r.n, r.metrics));
  $("agreement-reviewers-block").hidden = reviewers.length < 2;
  const between = agreement.between;
  $("agreement-between-block").hidden = !between;
  if (!between) return;
  $("agreement-between-summary").textContent = between.annotators.join(", ") + " on the " + between.transcripts +
    " transcript(s) two or more reviewed: Krippendorff's alpha, mean pairwise QWK, exact and within one.";
  const rows = $("agreement-between").querySelector("tbody");
  rows.replaceChildren();
  for (const [name, d] of Object.entries(between.dimensions)) {
    rows.appendChild(cellsRow([name, fixed(d.alpha.value, 2), fixed(d.qwk.value, 2),
      fixed(d.exact.value * 100, 0) + "%", fixed(d.within_one.value * 100, 0) + "%"]));
  }
}

// --- adjudication -------------------------------------------------------------------------------------------

async function loadDisputed() {
  const disputed = (await (await api("/reviews/disputed")).json()).disputed;
  const list = $("disputed");
  list.replaceChildren();
  for (const item of disputed) {
    const entry = document.createElement("li");
    entry.dataset.id = item.id;
    const scores = item.dimensions.map((name) => name + ": " + Object.entries(item.scores)
      .map(([who, s]) => who + " " + s[name]).join(", ")).join("; ");
    entry.textContent = item.id + " — " + scores + (item.adjudicated ? " (adjudicated)" : "");
    const button = document.createElement("button");
    button.textContent = item.adjudicated ? "Adjudicate again" : "Adjudicate";
    button.addEventListener("click", () => openAdjudication(item.id));
    entry.appendChild(button);
    list.appendChild(entry);
  }
  $("adjudication-card").hidden = !disputed.length;
}

async function openAdjudication(id) {
  const data = await (await api("/reviews/" + encodeURIComponent(id))).json();
  state.adjudicating = data;
  const rubric = state.rubric;
  const names = Object.keys(data.reviews);
  $("adjudicate-id").textContent = id;
  $("adjudicate-transcript").textContent = data.transcript;
  const head = $("side-by-side").querySelector("thead tr");
  head.replaceChildren();
  for (const text of ["", ...names, "model"]) {
    const cell = document.createElement("th");
    cell.textContent = text;
    head.appendChild(cell);
  }
  const body = $("side-by-side").querySelector("tbody");
  body.replaceChildren();
  for (const dimension of rubric.dimensions) {
    const model = data.model ? String(data.model.rating[dimension.name]) : "–";
    const row = cellsRow([dimension.name, ...names.map((n) => String(data.reviews[n][dimension.name])), model]);
    if (data.disputed.includes(dimension.name)) row.classList.add("disputed-row");
    names.forEach((_, i) => { if (data.disputed.includes(dimension.name)) row.cells[i + 1].classList.add("disputed"); });
    body.appendChild(row);
  }
  body.appendChild(cellsRow(["reasoning", ...names.map((n) => data.reviews[n].reasoning),
    data.model ? data.model.rating.reasoning : "–"]));
  const proposal = data.adjudicated || data.proposal;
  const form = $("adjudicate-form");
  form.replaceChildren();
  const keys = evidenceKeys();
  for (const dimension of rubric.dimensions) {
    const row = document.createElement("div");
    row.className = "adjudicate-dim";
    row.dataset.dimension = dimension.name;
    const name = document.createElement("span");
    name.textContent = dimension.name;
    const select = document.createElement("select");
    select.setAttribute("aria-label", dimension.name + " adjudicated score");
    for (let s = rubric.score_min; s <= rubric.score_max; s++) {
      const option = document.createElement("option");
      option.value = String(s);
      option.textContent = String(s);
      select.appendChild(option);
    }
    select.value = String(proposal[dimension.name]);
    row.append(name, select);
    if (keys[dimension.name]) {
      const quotes = document.createElement("textarea");
      quotes.rows = 2;
      quotes.className = "adjudicate-quotes";
      quotes.setAttribute("aria-label", "quotes for " + dimension.name + ", one per line");
      quotes.value = (proposal[keys[dimension.name]] || []).join("\n");
      row.appendChild(quotes);
    }
    form.appendChild(row);
  }
  $("adjudicate-reasoning").value = proposal.reasoning || "";
  $("adjudicate-strengths").value = (proposal.strengths || []).join("\n");
  $("adjudicate-areas").value = (proposal.areas_for_improvement || []).join("\n");
  $("adjudicate-status").textContent = data.adjudicated ? "Adjudicated already: saving again replaces it." : "";
  $("adjudicate-view").hidden = false;
}

$("adjudicate-save").addEventListener("click", async () => {
  const data = state.adjudicating;
  if (!data) return;
  const review = { reasoning: $("adjudicate-reasoning").value.trim(), strengths: lines("adjudicate-strengths"),
    areas_for_improvement: lines("adjudicate-areas") };
  const keys = evidenceKeys();
  for (const row of $("adjudicate-form").querySelectorAll(".adjudicate-dim")) {
    const name = row.dataset.dimension;
    review[name] = Number(row.querySelector("select").value);
    const quotes = row.querySelector("textarea");
    if (keys[name]) review[keys[name]] = quotes.value.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);
  }
  $("adjudicate-save").disabled = true;
  try {
    const response = await api("/reviews/" + encodeURIComponent(data.id) + "/adjudicate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(asReviewer({ review })),
    });
    const saved = await response.json();
    $("adjudicate-status").textContent = "Saved as the consensus of " + saved.id + " (by " + saved.reviewer + ")";
    await loadAgreement();
  } catch (e) {
    $("adjudicate-status").textContent = "Not saved: " + e.message;
  } finally {
    $("adjudicate-save").disabled = false;
  }
});

// --- batches -----------------------------------------------------------------------------------------------

$("batch-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  $("batch-file-name").textContent = file ? file.name : "";
  $("batch-start").disabled = !file;
});

$("batch-start").addEventListener("click", async () => {
  const file = $("batch-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  showError("batch-error", null);
  $("downloads").hidden = true;
  $("batch-start").disabled = true;
  const progress = $("batch-progress");
  progress.hidden = false;
  progress.value = 0;
  $("batch-status").textContent = "Uploading…";
  const counts = { ok: 0, failed: 0 };
  try {
    const response = await api("/batch", { method: "POST", body: form });
    state.batch = response.headers.get("X-HCP-Batch");
    const total = Number(response.headers.get("X-HCP-Total")) || 0;
    const resumed = Number(response.headers.get("X-HCP-Done")) || 0;
    progress.max = Math.max(total, 1);
    let stopped = null;
    const show = () => {
      progress.value = counts.ok + counts.failed;
      $("batch-status").textContent = (counts.ok + counts.failed) + " of " + total + " done · " + counts.ok +
        " rated · " + counts.failed + " failed" + (resumed ? " · " + resumed + " from an earlier run" : "");
    };
    show();
    await readLines(response, (record) => {
      if (record.status === "stopped") { stopped = record.reason; return; }
      counts[record.status === "ok" ? "ok" : "failed"] += 1;
      show();
    });
    if (stopped) showError("batch-error", new Error("The batch stopped: " + stopped));
    $("downloads").hidden = false;
  } catch (e) {
    showError("batch-error", e);
  } finally {
    $("batch-start").disabled = false;
  }
});

async function readLines(response, onRecord) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const text = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (text) onRecord(JSON.parse(text));
    }
    if (done) break;
  }
}

async function download(kind) {
  if (!state.batch) return;
  try {
    const name = encodeURIComponent(state.batch);
    const blob = await (await api("/batch/" + name + "/results." + kind)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = state.batch + "." + kind;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (e) {
    showError("batch-error", e);
  }
}

$("download-csv").addEventListener("click", () => download("csv"));
$("download-jsonl").addEventListener("click", () => download("jsonl"));

start();
