"""Evaluation: LWM's needle in a haystack (`lwm.eval.needle`), RULER's long-context task suite
(`lwm.eval.ruler`) and the video needle V-NIAH (`lwm.eval.vniah`)."""
