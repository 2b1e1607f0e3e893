"""constraints.txt pins what the suite was run with: every dependency setup.py names, at a
version inside its range, and the README's two commands install with it."""

import ast
import os

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_requirements():
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as setup_py:
        tree = ast.parse(setup_py.read())
    [call] = [node for node in ast.walk(tree)
              if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"]
    arguments = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords
                 if keyword.arg in ("install_requires", "extras_require")}
    return [Requirement(text) for text in
            arguments["install_requires"] + arguments["extras_require"]["test"]]


def pinned_versions():
    pins = {}
    with open(os.path.join(REPO, "constraints.txt"), encoding="utf-8") as constraints:
        for line in constraints:
            line = line.split("#", 1)[0].strip()
            if line:
                name, version = line.split("==")
                pins[canonicalize_name(name)] = version
    return pins


def test_every_requirement_is_pinned_inside_its_range():
    pins = pinned_versions()
    outside = [(str(requirement), pins.get(canonicalize_name(requirement.name)))
               for requirement in setup_requirements()
               if not requirement.specifier.contains(
                   pins.get(canonicalize_name(requirement.name), "0"), prereleases=True)]
    assert outside == []


def test_the_scripts_install_with_the_constraints():
    with open(os.path.join(REPO, "scripts", "setup.sh"), encoding="utf-8") as setup_sh:
        assert "pip install --quiet --disable-pip-version-check -c constraints.txt" in (
            setup_sh.read())
