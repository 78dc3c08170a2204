"""Evaluations: the tinymfv moral-foundations forced choice, and fixed probe prompts."""
