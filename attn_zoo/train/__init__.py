"""Data sources, the one training recipe, evaluation and budget matching."""
