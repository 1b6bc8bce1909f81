"""The C library as a C user gets it: `make install` puts the libraries, the
public headers and shmq.pc under a prefix; the shared library exports the
public API and nothing else; and a program built from the prefix with
pkg-config alone, linked shared or static, feeds a Python consumer."""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import shmq
from conftest import ROOT

PUBLIC_HEADERS = ("shmq.h", "shmq_region.h", "shmq_version.h")
EXAMPLE = ROOT / "examples" / "hello_producer.c"
SONAME = "libshmq.so.0"

_missing = [tool for tool in ("make", "cc", "pkg-config", "nm", "readelf") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(_missing),
    reason=f"needs {', '.join(_missing)} (Debian: apt-get install build-essential pkgconf)")

# The sanitizer run of pytest preloads ASan into this interpreter; the compiler,
# the linker and the example program are not built for it.
_ENV = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}


def _run(*args, env=None, timeout=120):
    """Runs a command to completion and returns its stdout; fails the test with its output otherwise."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env or _ENV)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def _header_version(include: Path) -> str:
    text = (include / "shmq_version.h").read_text()
    parts = [re.search(rf"^#define SHMQ_VERSION_{part} (\d+)$", text, re.M).group(1)
             for part in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def _declared_functions(include: Path) -> set:
    """Names of the shmq_ functions the installed headers declare (comments and macros left out)."""
    names = set()
    for header in PUBLIC_HEADERS:
        text = (include / header).read_text()
        text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
        text = re.sub(r"^\s*#(?:[^\n]*\\\n)*[^\n]*", " ", text, flags=re.M)
        names |= set(re.findall(r"\b(shmq_\w+)\s*\(", text))
    return names


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    """A prefix holding a fresh `make install`."""
    root = tmp_path_factory.mktemp("prefix")
    _run("make", "-s", "install", f"PREFIX={root}")
    return root


@pytest.fixture(scope="module")
def pkg_env(prefix):
    return {**_ENV, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}


def _pkg_config(pkg_env, *args):
    return _run("pkg-config", *args, "shmq", env=pkg_env).split()


def _build_example(prefix, pkg_env, out, link):
    """Compiles the example as strict C11 against the installed headers, with `link` for the library."""
    _run("cc", "-std=c11", "-pedantic", "-Wall", "-Wextra", "-Werror", EXAMPLE,
         *_pkg_config(pkg_env, "--cflags"), *link, "-o", out, env=pkg_env)
    return out


def _read_hellos(consumer, count, timeout=30):
    """Up to `count` messages, as many as arrive within `timeout` seconds."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = consumer.poll_many(count - len(got), timeout=0.1)
        if not batch:
            # A poll returns at once when the stream has ended (the producer
            # closed it) and nothing is left; the next producer reopens it.
            time.sleep(0.01)
        got += batch
    return got


def test_install_puts_libraries_public_headers_and_pkgconfig_under_the_prefix(prefix, pkg_env):
    version = _header_version(prefix / "include")
    files = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*") if not p.is_dir())
    assert files == sorted([
        "include/shmq.h", "include/shmq_region.h", "include/shmq_version.h",
        "lib/libshmq.a", "lib/libshmq.so", f"lib/{SONAME}", f"lib/libshmq.so.{version}",
        "lib/pkgconfig/shmq.pc",
    ])
    lib = prefix / "lib"
    assert os.readlink(lib / SONAME) == f"libshmq.so.{version}"
    assert (lib / "libshmq.so").resolve() == (lib / f"libshmq.so.{version}")
    assert _pkg_config(pkg_env, "--modversion") == [version]
    assert _pkg_config(pkg_env, "--cflags") == [f"-I{prefix}/include"]
    assert _pkg_config(pkg_env, "--libs") == [f"-L{lib}", "-lshmq"]
    assert "-lpthread" in _pkg_config(pkg_env, "--static", "--libs")


def test_shared_library_soname_is_the_abi_number(prefix):
    dynamic = _run("readelf", "-d", prefix / "lib" / "libshmq.so")
    assert re.findall(r"Library soname: \[(.*)\]", dynamic) == [SONAME]


def test_shared_library_exports_exactly_the_functions_the_public_headers_declare(prefix):
    out = _run("nm", "-D", "--defined-only", prefix / "lib" / "libshmq.so")
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert {sym for sym in exported if not sym.startswith("shmq_")} == set()
    declared = _declared_functions(prefix / "include")
    assert exported - declared == set(), "exported but in no public header: drop it from csrc/libshmq.map"
    assert declared - exported == set(), "declared in a public header but not exported: add it to csrc/libshmq.map"


def test_program_built_with_pkg_config_against_the_shared_library_feeds_a_python_consumer(
        prefix, pkg_env, name, tmp_path):
    hello = _build_example(prefix, pkg_env, tmp_path / "hello_producer", _pkg_config(pkg_env, "--libs"))
    assert re.findall(r"Shared library: \[(libshmq[^\]]*)\]", _run("readelf", "-d", hello)) == [SONAME]
    run_env = {**_ENV, "LD_LIBRARY_PATH": str(prefix / "lib")}
    version = _header_version(prefix / "include")
    count = 500

    # The program creates the queue; a consumer that starts at the earliest
    # message still in the ring (1024 slots) sees all of it.
    out = _run(hello, name, count, env=run_env, timeout=60)
    assert out == f"shmq {version}: published {count}, last sequence {count - 1}\n"
    with shmq.Consumer(name, start="earliest") as consumer:
        assert _read_hellos(consumer, count) == [b"hello %d" % i for i in range(count)]

        # A second run attaches and continues the sequence while the consumer waits.
        with subprocess.Popen([hello, name, str(count)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env=run_env) as proc:
            try:
                assert _read_hellos(consumer, count) == [b"hello %d" % i for i in range(count)]
                out, _ = proc.communicate(timeout=60)
            finally:
                proc.kill()
        assert proc.returncode == 0
        assert out == f"shmq {version}: published {count}, last sequence {2 * count - 1}\n"
        assert consumer.position == 2 * count and consumer.lost == 0


def test_program_linked_with_the_static_library_needs_no_libshmq_at_run_time(
        prefix, pkg_env, name, tmp_path):
    libdir = _run("pkg-config", "--variable=libdir", "shmq", env=pkg_env).strip()
    static_libs = [flag for flag in _pkg_config(pkg_env, "--static", "--libs-only-l") if flag != "-lshmq"]
    hello = _build_example(prefix, pkg_env, tmp_path / "hello_static",
                           [f"{libdir}/libshmq.a", *static_libs])
    assert "libshmq" not in _run("readelf", "-d", hello)
    _run(hello, name, 3, timeout=60)
    with shmq.Consumer(name, start="earliest") as consumer:
        assert _read_hellos(consumer, 3) == [b"hello 0", b"hello 1", b"hello 2"]


def test_staged_install_names_the_final_prefix_and_uninstall_removes_every_file(tmp_path):
    stage = tmp_path / "stage"
    _run("make", "-s", "install", f"DESTDIR={stage}", "PREFIX=/opt/shmq")
    root = stage / "opt" / "shmq"
    pc = (root / "lib" / "pkgconfig" / "shmq.pc").read_text()
    assert "prefix=/opt/shmq\n" in pc and str(stage) not in pc
    assert (root / "include" / "shmq.h").is_file() and (root / "lib" / SONAME).is_symlink()

    _run("make", "-s", "uninstall", f"DESTDIR={stage}", "PREFIX=/opt/shmq")
    assert [p for p in stage.rglob("*") if not p.is_dir()] == []
