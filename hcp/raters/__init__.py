"""Raters: how far several annotators agree, and the labels they agree on.

Takes several annotators' files in the training format (one file each, named after the annotator, or one file
whose records name their `annotator`); gives agreement per dimension and overall with bootstrap intervals, each
annotator's offset from the others, the transcripts to adjudicate, and consensus labels that train.
"""
