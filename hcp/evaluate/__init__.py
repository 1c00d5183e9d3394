"""Evaluation: how far the model agrees with human raters.

Takes labelled transcripts and the model's ratings of them (scored here through the batch stage, or read from
results files); gives agreement metrics, run-to-run reliability, a baseline comparison, the floor of raters that
never read, a confidence threshold with a guarantee (and the config that stores it), and a report with plots.
"""
