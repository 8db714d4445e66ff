"""What the tests build on: images, a registry, a relay, a fake proxy, tree diffs.

Importable as ``tests.support.*`` by the tests, bench/ and examples/ (an editable
install puts the checkout on the path). Each helper's own tests sit beside it.
"""
