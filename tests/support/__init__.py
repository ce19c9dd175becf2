"""Shared test helpers: deterministic images, masks, files and tiny training inputs."""
