"""Unpacking images into root filesystems, layer by layer, verified as they stream.

The package imports nothing on purpose: ``_layers`` (which the pull code uses)
needs :mod:`.compression`, while the whole-image flow needs the pull code, so an
``__init__`` that gathered both would be an import cycle. Import from the modules.
"""
