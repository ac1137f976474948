"""The suite's split: every module under tests/integration marks itself `integration` (so
`-m "not integration"` leaves exactly the tests that need no server), and no unit test does."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def module_marks(path: Path) -> set[str]:
    """The marker names in a module's ``pytestmark`` (one mark or a list of them)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return {m.func.attr if isinstance(m, ast.Call) else m.attr for m in marks}
    return set()


def test_every_integration_module_is_marked_integration():
    modules = sorted(TESTS.glob("integration/test_*.py"))
    assert len(modules) >= 19, [m.name for m in modules]
    assert [m.name for m in modules if "integration" not in module_marks(m)] == []


def test_no_unit_module_is_marked_integration():
    assert [m.name for m in sorted(TESTS.glob("unit/test_*.py")) if "integration" in module_marks(m)] == []


def test_module_marks_reads_a_list_and_a_single_mark(tmp_path):
    one = tmp_path / "test_one.py"
    one.write_text("import pytest\npytestmark = pytest.mark.integration\n")
    two = tmp_path / "test_two.py"
    two.write_text("import pytest\npytestmark = [pytest.mark.integration, pytest.mark.skipif(True, reason='x')]\n")
    none = tmp_path / "test_none.py"
    none.write_text("import pytest\nintegration = pytest.mark.integration\n")
    assert (module_marks(one), module_marks(two), module_marks(none)) == ({"integration"}, {"integration", "skipif"}, set())
