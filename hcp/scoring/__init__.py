"""Scoring: one transcript, rated by a model on the rubric.

Takes a transcript and a backend (the Ollama daemon, or llama.cpp in process); gives a validated `Rating`
with its overall score, token counts and timing, or an error that says why there is none.
"""
