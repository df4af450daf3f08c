"""Each test's annotation caches (the trainers' shared LVIS records) go to its temporary folder, not the user's."""
import pytest


@pytest.fixture(autouse=True)
def _annotation_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('GOL_NB_CACHE', str(tmp_path / 'annotation-cache'))
