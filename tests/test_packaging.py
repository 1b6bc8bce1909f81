"""What we ship: `python -m build` makes an sdist that is the whole source tree
(it builds, installs, and passes the tests in a fresh venv) and a wheel that is
only the library (the extension, the Python modules, the stubs), with the
metadata filled in.

Slow (about two minutes, and it needs PyPI for build and the test extra), so
it runs only with SHMQ_TEST_PACKAGING=1, as .ci/run sets it."""
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("SHMQ_TEST_PACKAGING") != "1",
                       reason="builds and installs the package: set SHMQ_TEST_PACKAGING=1"),
]

# Tracked files that are about the repository, not the source release.
NOT_IN_SDIST = (".ci/", ".gitignore", ".gitattributes", ".github/")
# The wheel holds the package's Python modules, its stubs and py.typed, the
# compiled extension, and nothing else (besides its .dist-info).
WHEEL_PACKAGE = {f"shmq/{p.name}" for p in (ROOT / "shmq").iterdir()
                 if p.suffix in (".py", ".pyi") or p.name == "py.typed"}


def _clean_env():
    """The environment of a user's shell: none of this test run's own settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LD_PRELOAD", "VIRTUAL_ENV", "SHMQ_TEST_PACKAGING", "SHMQ_SOAK", "SHMQ_SANITIZE",
                        "SHMQ_DEBUG", "PYTHONHOME") and not k.startswith(("PYTEST_", "ASAN_", "UBSAN_"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    return env


def _run(*args, cwd=None, timeout=600):
    run = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(map(str, args))}:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run.stdout


def _tracked_files():
    """Files git tracks in this checkout, or None outside one (an unpacked sdist)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {f for f in out.stdout.decode().split("\0") if f and (ROOT / f).is_file()}


@pytest.fixture(scope="module")
def built():
    """A fresh venv with build in it, and the sdist and wheel it made from this tree."""
    with tempfile.TemporaryDirectory(prefix="shmq-packaging-") as scratch:
        scratch = Path(scratch)
        venv = scratch / "venv"
        _run(sys.executable, "-m", "venv", venv)
        python = venv / "bin" / "python"
        _run(python, "-m", "pip", "install", "-q", "build")
        # Like `python -m build`: the sdist first, then the wheel built from the
        # unpacked sdist, so a file the sdist lacks breaks the wheel's build.
        _run(python, "-m", "build", "--outdir", scratch / "dist", ROOT)
        (sdist,) = (scratch / "dist").glob("shmq-*.tar.gz")
        (wheel,) = (scratch / "dist").glob("shmq-*.whl")
        yield python, sdist, wheel, scratch


def test_wheel_holds_the_library_and_no_c_sources(built):
    _, _, wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    package = {n for n in names if ".dist-info/" not in n}
    extension = {n for n in package if n.startswith("shmq/_shmq.") and n.endswith(".so")}
    assert len(extension) == 1, package
    assert package - extension == WHEEL_PACKAGE
    assert "shmq/_contenders.py" not in package  # the benchmark suite stays in benchmarks/
    assert not [n for n in names if n.endswith((".c", ".h"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    assert "Requires-Python: >=3.11" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "Provides-Extra: test" in metadata and "Provides-Extra: bench" in metadata
    assert "shmq = shmq.__main__:main" in entry_points


def test_long_description_links_work_off_github(built):
    """The README is the long description on the package index, where a
    relative link leads nowhere."""
    _, _, wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    description = metadata.split("\n\n", 1)[1]
    assert "# shmq" in description
    relative = re.findall(r"\]\((?!https?://|mailto:|#)([^)]*)\)", description)
    assert not relative, f"README.md: make these links absolute (https://github.com/shmq/shmq/blob/main/...): {relative}"


def test_sdist_is_the_whole_source_tree(built):
    _, sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n[len(top) + 1:] for n in tar.getnames() if n.startswith(top + "/")}
    for needed in ("Makefile", "LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "setup.py",
                   "csrc/shmq.h", "shmq/_shmq.c", "tests/conftest.py", "tests/c/run_tests.sh",
                   "benchmarks/run.py", "benchmarks/cbench.c", "scripts/test-all.sh"):
        assert needed in names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]
    tracked = _tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout: the sdist is not compared with the tracked files")
    missing = sorted(f for f in tracked if not f.startswith(NOT_IN_SDIST) and f not in names)
    assert not missing, f"tracked files missing from the sdist (MANIFEST.in): {missing}"


def test_sdist_installs_into_a_fresh_venv(built):
    python, sdist, _, scratch = built
    _run(python, "-m", "pip", "install", "-q", f"shmq[test] @ {sdist.as_uri()}")
    installed = _run(python, "-c", "import shmq; print(shmq.__file__)", cwd=scratch).strip()
    assert installed.startswith(str(python.parent.parent)), installed
    assert not list(Path(installed).parent.glob("*.[ch]"))
    out = _run(python.parent / "shmq", "bench", "--seconds", "0.2", cwd=scratch)  # the console script
    assert "received + lost == published: yes" in out


def test_sdist_tree_passes_the_tests(built):
    """The unpacked sdist, set up as a developer sets up a checkout (an
    editable install into the venv), builds the library and the programs,
    and builds and runs a C test and two pytest files. The whole suites already ran against the checkout,
    which test_sdist_is_the_whole_source_tree shows is the same tree: CI's
    time is spent once."""
    python, sdist, _, scratch = built
    tree = scratch / "tree"
    tree.mkdir()
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # 3.11.4 on
            tar.extractall(tree, filter="data")
        else:
            tar.extractall(tree)
    (source,) = tree.iterdir()
    _run(python, "-m", "pip", "install", "-q", "-e", f"{source}[test]")
    _run("make", "-s", "all", "build/tests/test_publish_poll", cwd=source)
    _run("sh", "tests/c/run_tests.sh", "build/tests/test_publish_poll", cwd=source)
    out = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
               "tests/test_api.py", "tests/test_bad_input.py", cwd=source)
    assert " passed" in out and " failed" not in out
