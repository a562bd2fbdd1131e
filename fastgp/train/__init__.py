"""The bundled WGAN-GP trainer (``fastgp train|sample|eval``).

Subpackages: ``config`` (options, presets, checks), ``data`` (datasets), ``gan`` (the GAN
math: losses, penalties, augmentation, the critic and generator steps), ``run`` (the
trainer's state, the run loop, guards, random streams, distributed reduction,
checkpoints, logs), ``evaluation`` (metrics, pictures, sample/eval); ``models`` (the
networks) and ``cli`` (the commands).
"""
