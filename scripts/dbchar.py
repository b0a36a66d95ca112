"""dbchar's entry in the webui: the webui runs this file at start-up and again on every "Reload UI".

The extension root is on sys.path only while this file runs, so lib_dbchar is imported here, at the
top. Registering from this file (not as a side effect of importing lib_dbchar) matters: on Reload UI
the webui clears all callbacks and re-runs this file, while lib_dbchar stays imported.
"""

from lib_dbchar.host.webui import register

register()
