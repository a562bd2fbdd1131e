"""The GAN math: losses and regularisers (``objectives``), DiffAugment (``augment``), the
replay buffer (``replay``), the generator's EMA (``ema``), and the critic and generator
updates that use them (``steps``)."""
