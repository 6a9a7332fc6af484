"""Weight spectra: singular values, condition numbers (MCN, GMCN) of the hidden matrices.

- :mod:`~pcpretrain.spectra.measures`: which matrices count, MCN and GMCN, the PC singular-value map;
- :mod:`~pcpretrain.spectra.analysis`: singular values of stacks of same-shaped matrices and the
  per-matrix and summary records (``spectra.jsonl``, ``spectral/*`` metrics) built from them.

Training's monitor (:mod:`pcpretrain.train.callbacks.spectral_monitor`) and the offline
``pcpretrain spectra`` command (:mod:`pcpretrain.analysis.spectra_report`) both compute through
these two modules, so their numbers agree.
"""
