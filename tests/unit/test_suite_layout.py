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


# Files of a test folder that are not test modules.
SUPPORT = {"__init__.py", "conftest.py"}


def modules_of(folder: str) -> list[Path]:
    """Every Python file under ``tests/<folder>`` (subfolders too) except its package and fixture files."""
    return sorted(p for p in (TESTS / folder).rglob("*.py") if p.name not in SUPPORT)


def test_every_integration_module_is_marked_integration():
    modules = modules_of("integration")
    names = {m.relative_to(TESTS / "integration").as_posix() for m in modules}
    # Anchors: a walk that found nothing would pass the checks below.
    assert {"test_analytics.py", "test_dag_run.py", "test_observability.py", "test_stack.py"} <= names
    # pytest also collects *_test.py: every file here is a test_ module, so none escapes the split.
    assert sorted(n for n in names if not n.rsplit("/", 1)[-1].startswith("test_")) == []
    assert [m.name for m in modules if "integration" not in module_marks(m)] == []


def test_no_unit_module_is_marked_integration():
    modules = modules_of("unit")
    assert Path(__file__).resolve() in modules  # this very module: the walk sees the unit tests
    assert [m.name for m in modules if "integration" in module_marks(m)] == []


def test_module_marks_reads_a_list_and_a_single_mark(tmp_path):
    one = tmp_path / "test_one.py"
    one.write_text("import pytest\npytestmark = pytest.mark.integration\n")
    two = tmp_path / "test_two.py"
    two.write_text("import pytest\npytestmark = [pytest.mark.integration, pytest.mark.skipif(True, reason='x')]\n")
    none = tmp_path / "test_none.py"
    none.write_text("import pytest\nintegration = pytest.mark.integration\n")
    assert (module_marks(one), module_marks(two), module_marks(none)) == ({"integration"}, {"integration", "skipif"}, set())
