"""The napari plugin: thin widgets over the engine (see ``napari.yaml`` for what napari shows).

Importing this package needs napari and a Qt binding; the engine does not.
"""
