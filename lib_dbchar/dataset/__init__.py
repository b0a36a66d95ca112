"""Dataset preparation (the Dataset tab): pictures -> 512 px squares, cropped never squashed.

Modules, lightest first: ``options`` (the settings dataclass, stdlib only), ``crop`` (square box
geometry), ``boxes`` (the per-dataset ``crops.json``), ``decode`` (any picture -> upright RGB),
``focal`` (face detector and saliency), ``dedupe`` (perceptual hashes), ``report`` (health report),
``prep`` (``run_prep``, the job) and ``cli`` (``python -m lib_dbchar prep SRC DST``). Importing this
package imports none of them.
"""
