# Generated from tests/_async/__init__.py by tools/gen_sync.py.
# Edit the source, not this file.
