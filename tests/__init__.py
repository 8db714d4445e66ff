"""The test suite: support/, unit/, integration/ and the _async/ -> _sync/ pair.

CONTRIBUTING.md says what each holds and how to run each group.
"""
