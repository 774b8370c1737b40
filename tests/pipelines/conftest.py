"""Fixtures of the pipelines tests: the session's tiny index, shared with tests/cluster."""

import pytest

from tests.cluster.helpers import tiny_index


@pytest.fixture(scope="session")
def corpus_and_index(ray_cluster, tmp_path_factory):
    return tiny_index(tmp_path_factory)
