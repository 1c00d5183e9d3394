"""Serving: the rater over HTTP, with a web page where reviewers correct ratings.

Takes a backend opened once (the embedded model or Ollama), the rubric and the scoring options; gives an HTTP
API (`/score`, `/batch`, `/reviews`, `/health`, `/rubric`, `/metrics`, OpenAPI docs at `/docs`) served by
uvicorn, a page at `/`, and a reviews file in the training data format that `hcp data validate` accepts and
`hcp train` trains on.
"""
