"""Griffe extension for the docs site: shmq.Consumer as the stubs describe it.

Griffe reads the package statically and never imports the compiled
extension. shmq/__init__.pyi describes every public name, and griffe merges
it into the package; but shmq.Consumer is re-exported from shmq/_aio.py (the
compiled type plus asyncio), and that merge happens before _aio is loaded, so
the stub's methods never reach it. Once the package is complete this merges
the stub's Consumer into _aio.Consumer, where the alias points.
"""
from pathlib import Path

import griffe


class ConsumerFromStubs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.path != "shmq":
            return
        stub_file = Path(pkg.filepath).with_suffix(".pyi")
        stubs = griffe.visit("shmq._aio", filepath=stub_file, code=stub_file.read_text())
        for name in list(stubs.members):
            if name != "Consumer":
                stubs.del_member(name)
        stubs.exports = None
        griffe.merge_stubs(pkg["_aio"], stubs)
