"""What a run is judged by and shown as: sample-quality metrics (``metrics``), pictures and
loss curves (``plots``), and ``fastgp sample`` / ``fastgp eval`` on a saved run
(``sampling``)."""
