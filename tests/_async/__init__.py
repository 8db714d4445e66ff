"""Tests of both clients, written once with asyncio.

tests/_sync/ is generated from tests/_async/ by tools/gen_sync.py.
"""
