"""The pipeline: configuration and its validation, stages and their keys, checks before a run, the shipped checkpoint, reports."""
