"""Build the optional C helper; everything else is in pyproject.toml.

``optional=True``: where there is no C compiler the install still succeeds, and ugram runs
its pure-Python paths on x86-64 (``ugram doctor`` says which one is in use; other CPUs need
the helper and refuse to start without it). ``UGRAM_REQUIRE_HELPER=1`` makes a failed
build fail the install instead: wheels are built so (pyproject.toml, [tool.cibuildwheel]).
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ugram._speedups",
            ["ugram/_speedups.c"],
            depends=["ugram/_ordering.h"],
            optional=os.environ.get("UGRAM_REQUIRE_HELPER", "") != "1",
            extra_compile_args=["-O2"],
        )
    ]
)
