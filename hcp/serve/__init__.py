"""Serving: the rater over HTTP, with a web page where reviewers correct ratings.

Takes a backend opened once (the embedded model or Ollama), the rubric and the scoring options; gives an HTTP
API (`/score`, `/batch`, `/reviews`, `/health`, `/rubric`, `/metrics`, OpenAPI docs at `/docs`) served by
uvicorn, a page at `/`, and a reviews file in the training data format that `hcp data validate` accepts and
`hcp train` trains on. Beside the current model version, a canary can rate a share of the transcripts (chosen by
content) and a shadow rate them again when the server is idle; every rating names its `model_version`.
"""
