"""The build metadata lives in pyproject.toml; this file lets older tools that call setup.py find it."""

from setuptools import setup

setup()
