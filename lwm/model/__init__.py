"""Models: the LLaMA decoder with LWM's vision vocabulary, and the VQGAN video tokenizer."""
