"""Data: rated transcripts in the training guide's JSONL or CSV format.

Takes a user's file (or a seed, for the sample generator); gives validated examples, every problem with its
file, line and field, stratified splits, and labelled sample conversations.
"""
