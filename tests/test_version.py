"""One version number: pyproject.toml's. The Python package reports it
(shmq.__version__ comes from the installed metadata), and the C header, from
which the Makefile writes shmq.pc and csrc/version.c makes shmq_version(),
carries the same one. tests/test_c_install.py checks the header against
shmq.pc and shmq_version()."""
import importlib.metadata
import re
import tomllib

import shmq
from conftest import ROOT


def _pyproject_version():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def _header_version():
    text = (ROOT / "csrc" / "shmq_version.h").read_text()
    return ".".join(re.search(rf"^#define SHMQ_VERSION_{part} (\d+)$", text, re.M).group(1)
                    for part in ("MAJOR", "MINOR", "PATCH"))


def test_the_c_header_carries_pyprojects_version():
    assert _header_version() == _pyproject_version(), (
        "csrc/shmq_version.h and pyproject.toml disagree: a release changes both")


def test_python_reports_the_installed_version():
    assert shmq.__version__ == importlib.metadata.version("shmq")


def test_the_installed_metadata_is_this_trees_version():
    assert importlib.metadata.version("shmq") == _pyproject_version(), (
        "the installed metadata is stale: run 'pip install -e .' again")
