"""The dependency floor: pyproject.toml states the tested ranges, and importing the package below a floor
is a one-line error naming the library, the floor and the fix."""

import subprocess
import sys
from importlib import metadata

import pytest

from rgra_lightning.versions import TESTED, DependencyError, check_versions, release
from tests.conftest import ROOT


def test_pyproject_states_the_ranges_the_import_check_holds_and_the_installed_versions_are_in_them():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["real"]
    for name, (floor, untested, _) in TESTED.items():
        assert f"{name}>={floor},<{untested}" in requirements
        installed = release(metadata.version(name))
        assert release(floor) <= installed < release(untested), f"{name} {installed} is not the tested range"


def fake_versions(**versions: str):
    def installed(name: str) -> str:
        if name in versions:
            return versions[name]
        return metadata.version(name)

    return installed


@pytest.mark.parametrize(
    "name, version",
    [("transformers", "5.21.1"), ("transformers", "4.57.6"), ("lightning", "2.5.6"), ("peft", "0.20.0")],
)
def test_a_library_below_its_floor_is_one_line_naming_it_the_floor_and_the_fix(name, version):
    floor, untested, _ = TESTED[name]
    with pytest.raises(DependencyError) as caught:
        check_versions(fake_versions(**{name: version}))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"rgra-lightning needs {name}>={floor} (")
    assert message.endswith(f"found {version}: pip install '{name}>={floor},<{untested}'")


def test_versions_at_or_above_the_floor_and_a_missing_optional_library_pass():
    check_versions(fake_versions(transformers="5.22.0.dev0", lightning="2.6.0", peft="0.21.0"))

    def without_peft(name: str) -> str:
        if name == "peft":
            raise metadata.PackageNotFoundError(name)
        return metadata.version(name)

    check_versions(without_peft)
    assert release("5.24.0.dev0") == (5, 24, 0) and release("2.6") == (2, 6) and release("0.21.2") > (0, 21)


def test_importing_the_package_below_the_floor_fails_with_that_line_and_without_torch():
    """The check runs at ``import rgra_lightning`` (so also when the ``rgra`` script starts), from package
    metadata: torch is not imported to decide."""
    code = (
        "import importlib.metadata as m, sys\n"
        "real = m.version\n"
        "m.version = lambda name: '5.21.1' if name == 'transformers' else real(name)\n"
        "try:\n"
        "    import rgra_lightning.commands\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error, sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    floor, untested, _ = TESTED["transformers"]
    assert done.stdout.startswith(f"DependencyError rgra-lightning needs transformers>={floor} (")
    assert done.stdout.rstrip().endswith(f"found 5.21.1: pip install 'transformers>={floor},<{untested}' []")
