"""Training of SAM models: losses, prompt simulation, data and synthetic images."""
