"""Build the optional C helpers; everything else is in pyproject.toml.

``optional=True``: where there is no C compiler the install still succeeds, and ugram runs
its pure-Python paths on x86-64 (``ugram doctor`` says which one is in use; other CPUs need
the helper and refuse to start without it). ``UGRAM_REQUIRE_HELPER=1`` makes a failed
build fail the install instead: wheels are built so (pyproject.toml, [tool.cibuildwheel]).

``ugram._speedups`` holds the receiver's and workers' loops; ``ugram._parsers`` the codecs'
parsers (:mod:`ugram.codecs.native`).
"""

import os

from setuptools import Extension, setup

OPTIONAL = os.environ.get("UGRAM_REQUIRE_HELPER", "") != "1"

setup(
    ext_modules=[
        Extension(
            "ugram._speedups",
            ["ugram/_speedups.c"],
            depends=["ugram/_ordering.h"],
            optional=OPTIONAL,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "ugram._parsers",
            ["ugram/_parsers.c"],
            optional=OPTIONAL,
            extra_compile_args=["-O2"],
        ),
    ]
)
