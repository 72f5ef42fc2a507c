"""Build the optional C helper; everything else is in pyproject.toml.

``optional=True``: where there is no C compiler the install still succeeds, and ugram runs
its pure-Python paths (``ugram doctor`` says which one is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ugram._speedups",
            ["ugram/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
