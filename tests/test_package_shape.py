"""The package keeps its shape: small modules, dependencies pointing one way, and the
cluster token's environment variable named in one place."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "powerstripflocker")
MAX_MODULE_LINES = 500

# What each room may import from the package besides itself; cli/ may import anything.
MAY_IMPORT = {
    "protocol": set(),
    "clients": {"protocol"},
    "serving": {"clients", "protocol"},
    "core": {"clients", "protocol"},
    "frontends": {"core", "clients", "protocol", "serving"},
    "control": {"clients", "protocol", "serving"},
    "agent": {"core", "clients", "protocol", "serving"},
    "powerstrip": {"clients", "protocol", "serving"},
    "localcluster": {"clients", "protocol", "serving"},
}


def modules():
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                yield os.path.relpath(path, PACKAGE), path


def imported_rooms(path):
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "powerstripflocker" and len(parts) > 1:
                yield parts[1]


def test_no_module_is_over_500_lines():
    long = {}
    for relative, path in modules():
        with open(path, encoding="utf-8") as source:
            lines = sum(1 for _ in source)
        if lines > MAX_MODULE_LINES:
            long[relative] = lines
    assert long == {}


def test_each_room_imports_only_the_rooms_below_it():
    wrong = set()
    for relative, path in modules():
        room = relative.split(os.sep)[0]
        if room not in MAY_IMPORT:
            continue
        for imported in imported_rooms(path):
            if imported != room and imported not in MAY_IMPORT[room]:
                wrong.add((relative, imported))
    assert wrong == set()


def test_the_token_variable_is_named_once():
    places = []
    for relative, path in modules():
        with open(path, encoding="utf-8") as source:
            places += [relative] * source.read().count("POWERSTRIP_FLOCKER_CLUSTER_TOKEN")
    assert places == [os.path.join("clients", "http.py")]
