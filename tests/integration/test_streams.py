"""The blocking Blob is a real io.RawIOBase: the standard library's I/O helpers accept it."""

from __future__ import annotations

import io
import shutil

import pytest

from containers_image_proxy import Blob, ClosedError, ImageProxy
from tests.support.images import BuiltImage

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_blob_is_a_raw_io_stream(big_layers_image: BuiltImage) -> None:
    digest, size, _, data = big_layers_image.layers[0]
    with ImageProxy() as proxy, proxy.open_image(big_layers_image.ref) as img:
        blob = proxy.get_blob(img, digest, size)
        assert isinstance(blob, Blob) and isinstance(blob, io.RawIOBase)
        assert blob.readable() and not blob.writable() and not blob.seekable()
        with io.BufferedReader(blob, buffer_size=64 * 1024) as buffered:
            assert buffered.read(3) == data[:3]
            assert buffered.read() == data[3:]
            assert buffered.read() == b""
        assert blob.closed

        out = io.BytesIO()
        with proxy.get_blob(img, digest, size) as blob:
            shutil.copyfileobj(blob, out)
        assert out.getvalue() == data
        with pytest.raises(ClosedError), blob:
            pass
