"""The package's shape: one package per stage, imports that only point down (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hcp"

# Lower layers never import higher ones; stages on one layer do not import each other. The foundation
# (errors, config, rubric, files, chat, gguf_file) is shared by every stage.
LAYERS = {
    "foundation": 0,
    "data": 1,
    "scoring": 2,
    "train": 2,
    "batch": 3,
    "export": 3,
    "evaluate": 4,
    "raters": 5,
    "registry": 5,
    "serve": 6,
    "terminal": 7,
    "cli": 8,
}
FOUNDATION = {"__init__", "errors", "config", "rubric", "evidence", "files", "chat", "gguf_file"}
STAGES = ("data", "train", "export", "scoring", "batch", "evaluate", "raters", "registry")


def unit(module: str) -> str:
    """'hcp.export.merge' -> 'export'; 'hcp.rubric' -> 'foundation'; 'hcp.__main__' -> 'cli'."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in FOUNDATION:
        return "foundation"
    return "cli" if top == "__main__" else top


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def hcp_imports(path: Path) -> set[str]:
    """Every hcp module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "hcp")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hcp":
            found.add(node.module)
    return found


def test_every_module_belongs_to_a_known_layer():
    unknown = {module_name(p) for p in PACKAGE.rglob("*.py") if unit(module_name(p)) not in LAYERS}
    assert not unknown, f"modules outside the layers of tests/test_layout.py: {sorted(unknown)}"


def test_imports_only_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in hcp_imports(path):
            a, b = unit(importer), unit(imported)
            if a != b and LAYERS[b] >= LAYERS[a]:
                upward.append(f"{importer} imports {imported}")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of imports in `graph` (module -> modules it imports), as a path that returns to its start."""
    circles, done = [], set()

    def walk(module: str, path: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                circles.append([*path[path.index(imported):], imported])
            elif imported not in done:
                walk(imported, [*path, imported])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            walk(module, [module])
    return circles


def test_the_package_has_no_import_circle():
    """No two modules import each other, even inside a function: a circle makes the import order matter. A module
    importing its own package (hcp.scoring.backends.openai -> hcp.scoring.backends) is no circle: Python imports
    the package first anyway."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        graph[importer] = {m for m in hcp_imports(path) if m != importer and not importer.startswith(m + ".")}
    assert import_circles(graph) == []


def test_the_circle_checker_sees_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_says_what_it_takes_and_gives(stage):
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8")))
    assert doc and "Takes" in doc and "gives" in doc, f"hcp/{stage}/__init__.py needs a docstring: takes ... gives"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layer rule is not vacuous: an import of the CLI from a stage counts as upward."""
    assert LAYERS[unit("hcp.cli")] > LAYERS[unit("hcp.scoring.score")]
    assert unit("hcp.rubric") == "foundation" and unit("hcp.export.merge") == "export"
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from hcp.cli import main\n    import hcp.terminal\n")
    assert hcp_imports(bad) == {"hcp.cli", "hcp.terminal"}


# --- dependencies -----------------------------------------------------------------------------------------

SETUP_CFG = PACKAGE.parent / "setup.cfg"
# Distributions imported by another name.
IMPORT_NAMES = {"pyyaml": "yaml", "llama_cpp_python": "llama_cpp", "scikit_learn": "sklearn",
                "swagger_ui_bundle_v2": "swagger_ui_bundle", "prometheus_client": "prometheus_client",
                "python_multipart": "multipart"}
# Declared, though hcp never imports them: what the libraries hcp calls need at run time, and the test tools.
NOT_IMPORTED = {
    "accelerate": "transformers' Trainer requires it",
    "sentencepiece": "transformers reads SentencePiece tokenizers (Mistral) with it",
    "protobuf": "sentencepiece's tokenizer conversion in transformers",
    "bitsandbytes": "QLoRA on CUDA; looked up with importlib.util.find_spec, loaded by transformers",
    "pytest": "the test extra",
    "ruff": "the test extra",
    "schemathesis": "the test extra: the API's property test",
    "playwright": "the test extra: the page's browser test",
    "multipart": "FastAPI parses uploaded files with python-multipart",
}
# Imported by a script that runs as a program of its own, with another package on its path: not hcp's dependency.
RUN_ELSEWHERE = {"conversion": "hcp/export/reference_driver.py runs inside llama.cpp's cached converter"}
# An extra may name an install requirement again to add that package's own extra: the test extra's
# llama-cpp-python[server] (a real OpenAI-compatible server for the openai backend's tests).
REPEATED_FOR_AN_EXTRA = {"llama_cpp_python"}


def declared_requirements() -> dict[str, list[str]]:
    """setup.cfg's requirements by group ('install' and each extra), as normalised distribution names."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)

    def names(value: str) -> list[str]:
        lines = [line.strip() for line in value.splitlines() if line.strip()]
        return [re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("-", "_") for line in lines]

    groups = {"install": names(cfg["options"]["install_requires"])}
    groups.update({extra: names(value) for extra, value in cfg["options.extras_require"].items()})
    return groups


def third_party_imports() -> set[str]:
    import sys

    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name not in ("hcp", "__future__")}


def test_setup_cfg_declares_what_hcp_imports_and_nothing_else():
    groups = declared_requirements()
    declared = {IMPORT_NAMES.get(name, name) for names in groups.values() for name in names}
    imported = third_party_imports() - set(RUN_ELSEWHERE)
    assert not imported - declared, f"hcp imports these, setup.cfg does not declare them: {imported - declared}"
    unused = declared - imported - set(NOT_IMPORTED)
    assert not unused, f"setup.cfg declares these, hcp never imports them: {unused}"
    repeated = {name for extra, names in groups.items() if extra != "install" for name in names} & set(
        groups["install"])
    assert not repeated - REPEATED_FOR_AN_EXTRA, f"an extra repeats a requirement every install has: {repeated}"
    assert all(len(names) == len(set(names)) for names in groups.values())
