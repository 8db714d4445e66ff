"""``python -m containers_image_proxy``: the ``containers-image-proxy`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
