"""Evaluation: needle-in-a-haystack retrieval (`lwm.eval.needle`)."""
