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


class DocstringsFromTheBinding(griffe.Extension):
    """The stubs give signatures and types; the words are the binding's own
    docstrings (shmq/_shmq.c), written once there. Where the package can be
    imported (its extension built), each stub member without a docstring
    takes the runtime object's; elsewhere the reference keeps signatures
    only."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.path != "shmq":
            return
        try:
            import shmq
        except ImportError:
            return
        for name in getattr(shmq, "__all__", []):
            runtime = getattr(shmq, name, None)
            try:
                obj = pkg[name]
            except KeyError:
                continue
            self._fill(obj, runtime)
            if isinstance(runtime, type):
                for member_name, member in list(getattr(obj, "members", {}).items()):
                    self._fill(member, getattr(runtime, member_name, None))

    @staticmethod
    def _fill(obj, runtime) -> None:
        if runtime is None or getattr(obj, "docstring", None) is not None:
            return
        text = getattr(runtime, "__doc__", None)
        if not text or (isinstance(runtime, type) and text == type.__doc__):
            return
        try:
            obj.docstring = griffe.Docstring(text.strip(), parent=obj)
        except Exception:  # an alias that cannot be resolved: leave it
            pass
