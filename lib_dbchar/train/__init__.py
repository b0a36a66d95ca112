"""Dreambooth training with prior preservation, as the guide does it, in-process.

* :mod:`~lib_dbchar.train.config` -- :class:`TrainConfig` (every setting of the guide) and presets.
* :mod:`~lib_dbchar.train.plan` -- the steps maths shown before starting, with warnings.
* :mod:`~lib_dbchar.train.model` -- the source checkpoint converted once to a working folder.
* :mod:`~lib_dbchar.train.classes` -- class (regularisation) images from the source model.
* :mod:`~lib_dbchar.train.loop` -- ``train(spec, ctx)``: the loop, checkpoints, previews, resume.
* :mod:`~lib_dbchar.train.optim` -- AdamW (8-bit or fused), the fp16 scaler, stepping in backward.
* :mod:`~lib_dbchar.train.run` -- the run's spec, folder, events and result.
* :mod:`~lib_dbchar.train.data` (what a step sees), :mod:`~lib_dbchar.train.text` (prompts to
  conditioning), :mod:`~lib_dbchar.train.sampling` (drawing images), :mod:`~lib_dbchar.train.state`
  (the resume file), :mod:`~lib_dbchar.train.tbevents` (TensorBoard files without tensorboard).
* :mod:`~lib_dbchar.train.cli` -- ``python -m lib_dbchar train``.

Importing this package imports neither torch nor diffusers; the modules that need them import them
inside their functions.
"""
