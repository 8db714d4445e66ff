"""Unpacking images into root filesystems, layer by layer, verified as they stream.

From the image down to the file system:

- ``image``: ``unpack`` and the flow it shares with ``unpack_async``;
- ``image_async``: ``unpack_async``, the flow's asyncio edges;
- ``pipeline``: the reader thread that fetches and decompresses layers ahead;
- ``layer``: a layer blob as a verified stream of its tar (``open_layer``);
- ``compression``: the media type and magic bytes rule, and the decompressors;
- ``tar``: tar headers, the end-of-archive checks, the forward-only tar source;
- ``writer``: ``RootfsWriter``, which applies a layer's entries;
- ``dirfd``, ``attrs``, ``whiteouts``, ``links``: what the writer is made of;
- ``limits`` and ``results``: what bounds an unpack, and what it reports.

The package imports nothing on purpose: ``_layers`` (which the pull code uses)
needs :mod:`.compression`, while the whole-image flow needs the pull code, so an
``__init__`` that gathered both would be an import cycle. Import from the modules.
"""
