"""Tests against real skopeo, docker-registry, umoci, podman and gpg, or the fake proxy."""
