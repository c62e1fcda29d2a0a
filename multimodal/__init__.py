"""Model assembly, data, training on Accelerate, evaluation and config."""
