# Generated from tests/_async/__init__.py by tools/gen_sync.py.
# Edit the source, not this file.
"""Tests of both clients, written once with asyncio.

tests/_sync/ is generated from tests/_async/ by tools/gen_sync.py.
"""
