"""The estimator tests' tiny model, spec and images, for the CLI tests too."""

from tests.estimation.conftest import device, tiny_images, tiny_model, tiny_spec  # noqa: F401
