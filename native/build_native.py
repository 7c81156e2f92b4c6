"""cffi builder for ``mailwarden_native._core`` (out-of-line API mode).

setup.py hands ``native/build_native.py:ffibuilder`` to setuptools, which
wants source paths relative to the directory it runs in (the repo root), so
paths are computed from this file's location and made relative to the
current directory.  ``python native/build_native.py`` builds the module in
place next to the package for quick local iteration.
"""

from __future__ import annotations

import glob
import os
import tomllib

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))

# One declaration file per area (like pynacl's bindings): each area of the C core adds its
# own cdef/*.h and include/*.h without touching this builder.
CDEF_DIR = os.path.join(HERE, "cdef")
INCLUDE_DIR = os.path.join(HERE, "include")


def _cdef() -> str:
    return "\n".join(
        open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(CDEF_DIR, "*.h")))
    )


def _includes() -> str:
    headers = sorted(os.path.basename(p) for p in glob.glob(os.path.join(INCLUDE_DIR, "*.h")))
    return "".join(f'#include "{name}"\n' for name in headers)


def _version() -> str:
    # The core is stamped with the package's version at build time; the binding compares the
    # two at import, so a core left over from another build is refused instead of misused.
    with open(os.path.join(HERE, os.pardir, "pyproject.toml"), "rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def make_builder(relative: bool = True) -> cffi.FFI:
    def path(p: str) -> str:
        return os.path.relpath(p, os.getcwd()) if relative else p

    sources = sorted(path(p) for p in glob.glob(os.path.join(HERE, "src", "*.c")))
    builder = cffi.FFI()
    builder.cdef(_cdef())
    builder.set_source(
        "mailwarden_native._core",
        _includes(),
        sources=sources,
        include_dirs=[path(INCLUDE_DIR)],
        define_macros=[("MW_VERSION", f'"{_version()}"')],
        extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
    )
    return builder


ffibuilder = make_builder()


if __name__ == "__main__":
    # In-place build for local iteration: compile in a scratch directory and
    # copy only the extension into native/mailwarden_native/.
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = make_builder(relative=False).compile(tmpdir=tmp)
        dest = os.path.join(HERE, "mailwarden_native", os.path.basename(built))
        shutil.copy2(built, dest)
        print(dest)
