"""Pick a checkpoint: the guide's overfitting test, rendered, scored and ranked (issue #7).

A run saves a checkpoint every few epochs; which one to keep is a trade-off between character
accuracy and flexibility. This package automates the guide's test:

* :mod:`~lib_dbchar.pick.probes` -- the probe set: the character in poses, outfits and backgrounds
  its dataset lacks, plus a leak check (the prompt without the token) and a drift check (the class
  prompt), saved per run as ``pick/probes.json``.
* :mod:`~lib_dbchar.pick.render` -- one set of modules into which each checkpoint is loaded in
  place, drawing probes with fixed seeds.
* :mod:`~lib_dbchar.pick.grid` -- rows = probe x seed, columns = the source model and every
  checkpoint; cells cached per checkpoint, so adding one renders only its column.
* ``score`` / ``rank`` / ``run`` -- tagging every cell and ranking the checkpoints.

Importing this package imports neither torch nor diffusers.
"""
