"""Tests that start no process: protocol, policy, OCI documents, options, reports."""
