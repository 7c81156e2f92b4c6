"""Exceptions raised by the native binding."""

from __future__ import annotations


class NativeError(Exception):
    """The native core could not do its job (out of memory, table too large).

    Malformed mail never raises this: it is reported through flags.
    """
