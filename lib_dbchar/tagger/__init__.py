"""The WD14 tagger (as SmilingWolf's demo computes it, in fast batches) and the tag editor's core.

Modules (importing any of them loads neither onnxruntime nor huggingface_hub):

* ``models``      -- the registry of SmilingWolf models at pinned revisions; cache/download/local folder.
* ``labels``      -- ``selected_tags.csv`` -> :class:`~lib_dbchar.tagger.labels.TagTable`.
* ``preprocess``  -- picture -> float32 BGR ``[S, S, 3]``, bit-identical to the reference.
* ``session``     -- provider choice, the session factory seam, :class:`~lib_dbchar.tagger.session.Tagger`.
* ``postprocess`` -- probabilities -> selected tags (strict thresholds, MCut).
* ``captions``    -- caption text, escaping, exclusions, write modes.
* ``runner``      -- :class:`~lib_dbchar.tagger.runner.TaggerConfig` and
  :func:`~lib_dbchar.tagger.runner.run_tagging` (the batch pipeline).
* ``backups``     -- caption backups before bulk writes, undo of the last one.
* ``editor``      -- the tag editor: frequencies, filters, bulk add/remove/replace, traits.
* ``cli``         -- ``python -m lib_dbchar tag DIR``.
"""
