"""Helpers shared by the tests: the naive reference and cubes (``cubes``), the STAC fixtures
(``stac_fixtures``), paths (``paths``) and small runs used by several modules. ``tests/`` is on
``sys.path`` (``pythonpath`` in pyproject.toml), so test modules import ``helpers.<module>``."""
