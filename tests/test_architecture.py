"""The package's shape, checked: no import cycles, masked ones (inside functions, TYPE_CHECKING) included.

The layer contract itself is import-linter's (pyproject.toml, run by ``make lint``); this adds what a layers
contract cannot see: two modules of one package that import each other.
"""

from __future__ import annotations

import grimp


def test_no_module_imports_one_that_imports_it_back():
    graph = grimp.build_graph("dfdetect")
    cycles = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                     if a != b and graph.find_shortest_chain(importer=b, imported=a)})
    assert cycles == []
