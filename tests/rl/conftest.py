import pytest

from envs_for_tests import register


@pytest.fixture(autouse=True, scope="session")
def _test_envs():
    register()
