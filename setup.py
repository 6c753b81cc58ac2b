"""Build script: the package metadata lives in pyproject.toml; the compiled op is added here."""
from setuptools import setup

setup()
