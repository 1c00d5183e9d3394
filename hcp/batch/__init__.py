"""Batch: many transcripts, rated resumably.

Takes a JSONL or CSV file, or a folder of .txt files; gives a results file with one JSON line per transcript,
appended as each is rated, so that a crash loses nothing and a rerun finishes the rest (and a CSV of it).
"""
