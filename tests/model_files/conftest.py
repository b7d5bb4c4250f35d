"""Fixtures of the model-file tests: each test module gets its own tester and tiny model (module scope), built from
config dicts with nothing but the model files, transformers and torch."""

import pytest

from tests.model_files.model_tester import MODAModelTester


@pytest.fixture(scope="module")
def tester():
    return MODAModelTester()


@pytest.fixture(scope="module")
def model(tester):
    """The module's tiny model (eval mode, randomized weights). A test that changes its weights or dtype works on a
    copy or a model of its own, so the module's other tests see it as built."""
    return tester.create_model()
