"""The wheel users install: `make wheel` leaves a manylinux wheel in dist/
that auditwheel accepts, that holds the library and nothing else, and that
installs into a fresh venv with no compiler reachable, runs, and passes the
Python API tests there (the fast ones: -m "not slow", and none that needs the
C programs, which need a compiler; both ran against the checkout already).

It needs the wheel and PyPI (pytest and numpy for the fresh venv), so it runs
only with SHMQ_TEST_WHEEL=1, as .ci/run sets it after `make wheel`."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("SHMQ_TEST_WHEEL") != "1",
                       reason="tests dist/'s wheel: run make wheel, then set SHMQ_TEST_WHEEL=1"),
]

with open(ROOT / "pyproject.toml", "rb") as _f:
    VERSION = tomllib.load(_f)["project"]["version"]
PLATFORM = "manylinux_2_28_x86_64"  # the Makefile's WHEEL_PLAT
GLIBC_MAX = (2, 28)
PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
# What the extension may link: glibc's own libraries, never something to bundle.
SYSTEM_LIBS = {"libc.so.6", "libpthread.so.0", "librt.so.1", "libm.so.6", "libdl.so.2"}
# The Python API tests: they need only the installed package.
API_TESTS = ["test_api.py", "test_bad_input.py", "test_edges.py", "test_lossless.py",
             "test_processes.py", "test_trust_boundary.py", "test_zero_copy.py", "test_cli.py"]
# Names a build would reach for a compiler or linker by.
COMPILERS = ["cc", "gcc", "c++", "g++", "clang", "clang++", "ld", "zig", f"{sysconfig.get_config_var('MULTIARCH')}-gcc"]

# Loaded into the installed-wheel pytest run: it checks that `shmq` is the
# installed package, and leaves out the tests that build the C programs.
PLUGIN = '''
import os, sys
import shmq

def pytest_configure(config):
    where = os.path.dirname(shmq.__file__)
    assert where.startswith(sys.prefix), f"shmq imported from {where}, not from the venv {sys.prefix}"

def pytest_collection_modifyitems(config, items):
    needs_c = [item for item in items if "c_programs" in getattr(item, "fixturenames", ())]
    if needs_c:
        config.hook.pytest_deselected(items=needs_c)
        items[:] = [item for item in items if item not in needs_c]
'''

ROUND_TRIP = '''
import multiprocessing, os, sys
import shmq

def consume(name, ready):
    with shmq.Consumer(name, start="earliest") as c:
        ready.set()
        got = [c.poll(timeout=10) for _ in range(1000)]
        assert c.lost == 0
    assert got == [b"message %d" % i for i in range(1000)], got[:3]

if __name__ == "__main__":
    assert shmq.__version__ == sys.argv[1], shmq.__version__
    name = f"wheel-round-trip-{os.getpid()}"
    with shmq.Producer(name, slot_size=64, capacity=1024, lossless=True, unlink_on_close=True) as p:
        ready = multiprocessing.Event()
        child = multiprocessing.Process(target=consume, args=(name, ready))
        child.start()
        assert ready.wait(30)
        for i in range(1000):
            p.publish(b"message %d" % i)
        child.join(60)
    assert child.exitcode == 0, child.exitcode
    assert not shmq.exists(name)
    print("round trip: 1000 messages from", shmq.__file__)
'''


def _run(args, env=None, cwd=None, timeout=600):
    proc = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel():
    found = sorted((ROOT / "dist").glob(f"shmq-{VERSION}-{PY_TAG}-{PY_TAG}-*.whl"))
    assert found, f"no shmq {VERSION} wheel for {PY_TAG} in dist/: run make wheel"
    (path,) = found
    return path


def test_the_wheel_is_tagged_manylinux_2_28(wheel):
    assert wheel.name == f"shmq-{VERSION}-{PY_TAG}-{PY_TAG}-{PLATFORM}.whl"


def test_auditwheel_accepts_it_as_manylinux(wheel):
    out = _run([sys.executable, "-m", "auditwheel", "show", wheel])
    policy = re.search(r'consistent with\s+the following platform tag:\s+"manylinux_(\d+)_(\d+)_x86_64"', out)
    assert policy, out
    assert (int(policy.group(1)), int(policy.group(2))) <= GLIBC_MAX, out


def test_it_holds_the_library_the_stubs_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if not n.endswith("/")}
    package = {n for n in names if not n.startswith(f"shmq-{VERSION}.dist-info/")}
    expected = {f"shmq/{p.name}" for p in (ROOT / "shmq").iterdir()
                if p.suffix in (".py", ".pyi") or p.name == "py.typed"}
    expected.add(f"shmq/_shmq{sysconfig.get_config_var('EXT_SUFFIX')}")
    assert package == expected
    assert not [n for n in names if ".libs/" in n], "auditwheel grafted a library into the wheel"


@pytest.fixture(scope="module")
def extension(wheel, tmp_path_factory):
    """The wheel's compiled extension, unpacked."""
    where = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(wheel) as z:
        (member,) = [n for n in z.namelist() if n.startswith("shmq/_shmq.") and n.endswith(".so")]
        z.extract(member, where)
    return where / member


@pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("nm") is None, reason="needs binutils")
def test_the_extension_needs_only_old_glibc(extension):
    dynamic = _run(["readelf", "-d", extension])
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
    assert needed <= SYSTEM_LIBS, needed
    assert "RPATH" not in dynamic and "RUNPATH" not in dynamic
    # A symbol with no version is one the stub glibc lacked: the link let it
    # through, and an old system would fail to load the module.
    undefined = _run(["nm", "-D", "--undefined-only", extension]).split("\n")
    libc = [line.split()[-1] for line in undefined
            if line.strip() and not re.search(r"\s_?_?Py|\s_Py", line) and " w " not in line]
    unversioned = [s for s in libc if "@" not in s]
    assert not unversioned, f"libc symbols without a version: {unversioned}"
    versions = {tuple(map(int, v.split("."))) for v in re.findall(r"@GLIBC_([\d.]+)", "\n".join(libc))}
    assert max(versions) <= GLIBC_MAX, sorted(versions)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed while no compiler could be run:
    every compiler and linker name on PATH, and CC, CXX and LDSHARED, run a
    script that fails. pip gets binaries only (--only-binary :all:), so it
    cannot even try to build anything."""
    scratch = tmp_path_factory.mktemp("installed-wheel")
    shims = scratch / "no-compilers"
    shims.mkdir()
    refuse = shims / "refuse"
    refuse.write_text('#!/bin/sh\necho "$0: no compiler on this test\'s PATH" >&2\nexit 1\n')
    refuse.chmod(0o755)
    for name in COMPILERS:
        (shims / name).symlink_to(refuse)
    venv = scratch / "venv"
    _run([sys.executable, "-m", "venv", venv])
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LD_PRELOAD", "SHMQ_TEST_WHEEL") and not k.startswith("PYTEST_")}
    env.update(PATH=f"{shims}:{venv / 'bin'}:/usr/bin:/bin", CC=str(refuse), CXX=str(refuse),
               LDSHARED=str(refuse), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    python = venv / "bin" / "python"
    assert _run(["sh", "-c", "cc --version >/dev/null 2>&1 || echo no compiler"], env=env).strip() == "no compiler"
    out = _run([python, "-m", "pip", "install", "--only-binary", ":all:", wheel,
                "pytest>=7", "pytest-timeout", "numpy"], env=env, cwd=scratch)
    assert "Building wheel" not in out and "setup.py" not in out, out
    return python, env, scratch


def test_installing_it_copies_the_extension_as_built(installed, wheel):
    python, env, scratch = installed
    where = _run([python, "-c", "import shmq._shmq as m; print(m.__file__)"], env=env, cwd=scratch).strip()
    assert where.startswith(str(scratch / "venv")), where
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.startswith("shmq/_shmq.") and n.endswith(".so"))
        packed = hashlib.sha256(z.read(member)).hexdigest()
    assert hashlib.sha256(Path(where).read_bytes()).hexdigest() == packed


def test_a_producer_and_a_consumer_process_round_trip(installed):
    python, env, scratch = installed
    script = scratch / "round_trip.py"
    script.write_text(ROUND_TRIP)
    out = _run([python, script, VERSION], env=env, cwd=scratch, timeout=120)
    assert "round trip: 1000 messages" in out, out
    out = _run([python.parent / "shmq", "bench", "--seconds", "0.2"], env=env, cwd=scratch, timeout=120)
    assert "received + lost == published: yes" in out, out


def test_the_python_api_tests_pass_against_the_installed_wheel(installed, tmp_path):
    python, env, _ = installed
    # A tree with the tests, the docs they read and pytest's settings, and
    # no shmq/: `import shmq` is the installed one.
    tests = tmp_path / "tests"
    tests.mkdir()
    for source in (ROOT / "tests").glob("*.py"):  # the chosen tests, conftest and their helpers
        if source.name in API_TESTS or not source.name.startswith("test_"):
            shutil.copy(source, tests / source.name)
    (tests / "installed_wheel_plugin.py").write_text(PLUGIN)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "docs").mkdir()
    for doc in (ROOT / "docs").glob("*.md"):
        shutil.copy(doc, tmp_path / "docs")
    run_env = {**env, "PYTHONPATH": str(tests)}
    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "installed_wheel_plugin",
                "-m", "not slow", "tests"], env=run_env, cwd=tmp_path, timeout=800)
    summary = out.strip().splitlines()[-1]
    print(summary)
    assert " passed" in summary and "failed" not in summary and "error" not in summary, out[-3000:]
