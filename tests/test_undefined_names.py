"""No function in the project's Python reads a global name that nothing defines.

Such a name fails only when its line runs, and some lines run only on a GPU (benchmarks/run.py
read an undefined `b` on every CUDA training row, which the CPU grid never reaches). A symbol
table pass over every file finds them without running anything: a name a function reads as a
global must be assigned or imported at module level, or be a builtin.
"""

import builtins
import glob
import os
import symtable

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(p for folder in ("birnn_ext", "benchmarks", "scripts", "tests")
               for p in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True))


def undefined_globals(path):
    """(function, name) for each global a function reads that the module never defines."""
    with open(path) as f:
        top = symtable.symtable(f.read(), path, "exec")
    defined = {s.get_name() for s in top.get_symbols()
               if s.is_assigned() or s.is_imported() or s.is_namespace()}
    defined |= {"__file__", "__name__", "__doc__", "__spec__"}
    found = []

    def walk(table):
        for child in table.get_children():
            if child.get_type() == "function":
                for s in child.get_symbols():
                    name = s.get_name()
                    if (s.is_global() and not s.is_declared_global() and s.is_referenced()
                            and name not in defined and not hasattr(builtins, name)):
                        found.append((child.get_name(), name))
            walk(child)

    walk(top)
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_no_undefined_global_names(path):
    assert undefined_globals(path) == []


def test_the_check_finds_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    a = os.sep\n    return a + b\n")
    assert undefined_globals(str(bad)) == [("f", "b")]
