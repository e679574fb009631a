"""Imports point down only: builder -> compiler -> runtime -> export -> pages, and no page imports
another page. Read from the source with ast, so an import inside a function counts too."""

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("i18n", "builder", "compiler", "runtime", "export", "pages")
PAGES = ("pages.build", "pages.train", "pages.export")


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def library_files(package: str) -> list[Path]:
    """A package's modules; `__main__.py` files are programs that nothing imports."""
    return [p for p in (ROOT / package).rglob("*.py") if p.name != "__main__.py"]


@pytest.mark.parametrize("package", LAYERS[1:])
def test_a_package_imports_nothing_above_it(package: str) -> None:
    above = LAYERS[LAYERS.index(package) + 1 :]
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in library_files(package)
        for name in imported_modules(path)
        if name.split(".")[0] in above
    )
    assert library_files(package), f"{package}/ has no modules"
    assert wrong == []


def test_no_page_imports_another_page() -> None:
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / "pages").glob("*.py")
        for name in imported_modules(path)
        if name in PAGES
    )
    assert wrong == []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """NetBuilder's modules, with an arrow from each to every NetBuilder module it imports."""
    modules = {
        module_name(path): path
        for package in LAYERS
        for path in (ROOT / package).rglob("*.py")
        if "node_modules" not in path.parts
    }
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from(
            (name, imported)
            for imported in imported_modules(path)
            if imported in modules and imported != name
        )
    return graph


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = import_graph()
    assert graph.number_of_edges() > 50  # the walk found the house's imports
    assert list(nx.simple_cycles(graph)) == []


def test_the_layering_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pages.parts import state\n")
    assert "pages.parts" in imported_modules(module)


@pytest.mark.parametrize("page", ["build", "train", "export"])
def test_every_page_is_drawn_by_its_render_function(page: str) -> None:
    """Pages read alike: one render() that draws the page, called when Streamlit runs the file."""
    tree = ast.parse((ROOT / "pages" / f"{page}.py").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    last = tree.body[-1]
    assert "render" in functions
    assert isinstance(last, ast.If) and ast.unparse(last) == (
        "if __name__ == '__main__':\n    render()"
    )


def test_streamlits_older_multipage_mode_is_off_once_the_pages_are_imported() -> None:
    """A fresh server in Streamlit's older mode (pages/ beside app.py) would run /train without
    app.py; importing the pages turns it off and marks that run to be run again."""
    import subprocess
    import sys

    check = (
        "from streamlit.runtime.pages_manager import PagesManager\n"
        "PagesManager.uses_pages_directory = True  # what a fresh server decided from the folder\n"
        "import pages\n"
        "print(PagesManager.uses_pages_directory, pages.OPENED_WITHOUT_APP)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_a_page_run_without_app_py_runs_again_through_it() -> None:
    from streamlit.testing.v1 import AppTest

    import pages

    pages.OPENED_WITHOUT_APP = True
    app = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60).run()
    assert not app.exception
    assert pages.OPENED_WITHOUT_APP is False  # its one extra run was asked for and taken
    assert [title.value for title in app.title] == ["Train"]
