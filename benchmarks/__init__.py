"""fastgp's benchmark suite: ``python -m benchmarks.run`` (see benchmarks/README.md).

Modules, one job each: ``machine`` (what ran where, result-file names), ``timing``
(repeat-and-median timers, CPU and CUDA), ``cases`` (the size grid and counted bytes),
``providers`` (eager, ``torch.compile``, fastgp and copy versions of each operation),
``critics`` and ``critic_step`` (whole WGAN-GP critic steps), ``memory`` (peak memory of a
step), ``report`` (rows, ratios, targets, JSON/CSV/Markdown), ``plot`` (the PNG) and ``run``
(the command line). ``gpu`` is the GPU benchmark of ``gpu_check.sh``, the one GPU check
(stages run by ``gpu_check_lib.sh``).
"""
