"""Meta-Dataset integration: data, trainer, CLI and gin wiring around the alfa_tf core."""
