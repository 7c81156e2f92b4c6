# setup.py exists only to hand cffi's out-of-line API build to setuptools; everything else is
# declared in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
