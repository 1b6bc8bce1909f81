"""Build of the shmq C extension: the C core in csrc/ plus the binding, as one module.

Switches (environment variables):
  SHMQ_DEBUG=1     -O0 -g3, no NDEBUG
  SHMQ_SANITIZE=1  -fsanitize=address,undefined (run Python with
                   LD_PRELOAD=$(gcc -print-file-name=libasan.so))
"""
import glob
import os

from setuptools import Extension, setup

# Each flavour builds in its own folder, so one never reuses the other's objects
# (build/ itself belongs to the Makefile).
flavour = "py"
compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
link_args = []
if os.environ.get("SHMQ_DEBUG") == "1":
    flavour += "-debug"
    compile_args += ["-O0", "-g3", "-UNDEBUG"]
else:
    compile_args += ["-O2"]
if os.environ.get("SHMQ_SANITIZE") == "1":
    flavour += "-sanitize"
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    compile_args += sanitize
    link_args += sanitize

setup(
    options={"build": {"build_base": os.path.join("build", flavour)}},
    ext_modules=[
        Extension(
            "shmq._shmq",
            sources=["shmq/_shmq.c"] + sorted(glob.glob("csrc/*.c")),
            include_dirs=["csrc"],
            depends=sorted(glob.glob("csrc/*.h")),
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
)
