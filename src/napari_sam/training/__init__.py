"""Training of SAM models: data, simulated prompts, losses, the trainer and its recipes."""
