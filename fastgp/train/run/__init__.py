"""Running a training job: the state of a run and its generator step (``trainer``), the
run loop (``loop``), the non-finite guards (``guards``), the random streams (``streams``),
the distributed reduction (``distributed``), checkpoints (``checkpoint``) and the metrics
log (``run_log``)."""
