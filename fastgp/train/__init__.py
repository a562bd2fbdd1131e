"""The bundled WGAN-GP trainer (``fastgp train|sample|eval``): data, models, losses, loop."""
