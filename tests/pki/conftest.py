from collections.abc import Iterator

import pytest

from tests.softhsm import SoftHsm, softhsm_session


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    yield from softhsm_session(tmp_path_factory.mktemp("softhsm"))
