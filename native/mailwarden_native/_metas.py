"""Expressions over numbered flags, resolved in the C core (the antispam metas); text as the
bytes of its characters' classes (the antispam pattern sets' alphabets)."""

from __future__ import annotations

import array
import sys
from collections.abc import Iterable, Sequence

from ._core import ffi, lib

__all__ = ["OP", "FlagExpressions"]

_changed = lib.mw_meta_changed
_code_points = lib.mw_code_point_bytes
_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
_FAILED = int(ffi.cast("size_t", -1))
# The C side writes what the caller reads of the output array: no clearing needed.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)


class OP:
    """The opcodes of a :class:`FlagExpressions` program (``native/include/mw_metas.h``).

    ``HIT`` (the flag number follows) and ``CONST`` (the value follows) push a value; the
    others pop their operands and push the result, as Python evaluates the operator: ``AND``
    and ``OR`` give one of their operands, ``NOT`` and the comparisons 0 or 1."""

    HIT = int(lib.MW_OP_HIT)
    CONST = int(lib.MW_OP_CONST)
    NOT = int(lib.MW_OP_NOT)
    NEG = int(lib.MW_OP_NEG)
    POS = int(lib.MW_OP_POS)
    ADD = int(lib.MW_OP_ADD)
    SUB = int(lib.MW_OP_SUB)
    MUL = int(lib.MW_OP_MUL)
    DIV = int(lib.MW_OP_DIV)
    LT = int(lib.MW_OP_LT)
    LE = int(lib.MW_OP_LE)
    GT = int(lib.MW_OP_GT)
    GE = int(lib.MW_OP_GE)
    EQ = int(lib.MW_OP_EQ)
    NE = int(lib.MW_OP_NE)
    AND = int(lib.MW_OP_AND)
    OR = int(lib.MW_OP_OR)


_UNARY = frozenset({OP.NOT, OP.NEG, OP.POS})
_BINARY = frozenset(range(OP.ADD, OP.OR + 1))
STACK = int(lib.MW_META_STACK)


class FlagExpressions:
    """Expressions over numbered flags (1 set, 0 not), each setting a flag of its own, compiled
    once and resolved in one C call (:meth:`changed`).

    ``programs[i]`` is expression ``i`` in postfix: a sequence of opcodes (:class:`OP`), each
    ``HIT`` followed by a flag number and each ``CONST`` by a number. ``flags[i]`` is the flag
    it sets. An expression must come after every expression whose flag it reads. A division
    by zero makes an expression not set unless an ``AND``/``OR`` leaves that operand out, as
    Python's ZeroDivisionError would. ``ValueError`` for a malformed program (an operator
    without its operands, more than one value left, a stack deeper than 64, a flag number
    outside ``range(count)``, an expression reading a later one's flag).
    """

    def __init__(
        self, programs: Sequence[Sequence[float]], flags: Sequence[int], count: int
    ) -> None:
        if len(programs) != len(flags):
            raise ValueError("one flag per program")
        if len(set(flags)) != len(flags) or not all(0 <= f < count for f in flags):
            raise ValueError("each program sets a distinct flag in range(count)")
        code: list[int] = []
        entry: list[int] = []
        constants: list[float] = []
        later = {f: i for i, f in enumerate(flags)}
        read_by: list[list[int]] = [[] for _ in range(count)]
        for index, program in enumerate(programs):
            entry.append(len(code))
            read = _check(program, count, constants, code)
            if any(later.get(f, -1) >= index for f in read):
                raise ValueError(f"expression {index} reads its own or a later one's flag")
            for flag in read:
                read_by[flag].append(index)
        readers = [index for found in read_by for index in found]
        reader_at = [0]
        for found in read_by:
            reader_at.append(reader_at[-1] + len(found))
        self.count = count
        self.size = len(programs)
        self._keep = (
            ffi.new("int32_t[]", code or [0]),
            ffi.new("uint32_t[]", entry or [0]),
            ffi.new("uint32_t[]", list(flags) or [0]),
            ffi.new("double[]", constants or [0.0]),
            ffi.new("uint32_t[]", readers or [0]),
            ffi.new("uint32_t[]", reader_at),
        )
        zero = bytes(max(count, 1))
        # Each expression's value when no flag is set: every one evaluated once.
        self._base = ffi.new("uint8_t[]", max(self.size, 1))
        self._flag_base = ffi.new("uint8_t[]", zero)
        set_at = self._run((), every=True)
        for index in set_at:
            self._base[index] = 1
            self._flag_base[flags[index]] = 1
        #: Per expression, whether it is set when no flag is.
        self.base: tuple[bool, ...] = tuple(bool(self._base[i]) for i in range(self.size))

    def changed(self, set_flags: Iterable[int]) -> list[int]:
        """With the flags ``set_flags`` set (out-of-range numbers ignored), the expressions,
        in order, whose value is not their :attr:`base`. An expression whose own flag is in
        ``set_flags`` is taken as set and not evaluated (nor listed)."""
        return self._run(set_flags, every=False)

    def _run(self, set_flags: Iterable[int], every: bool) -> list[int]:
        given = array.array("I", set_flags)
        out = _alloc("uint32_t[]", max(self.size, 1))
        code, entry, flags, constants, readers, reader_at = self._keep
        n = _changed(
            code,
            entry,
            flags,
            self._base,
            self.size,
            constants,
            readers,
            reader_at,
            self._flag_base,
            self.count,
            ffi.from_buffer("uint32_t[]", given) if given else ffi.NULL,
            len(given),
            1 if every else 0,
            out,
        )
        if n == _FAILED:
            raise MemoryError("mw_meta_changed failed")
        return list(out[0:n])


def _check(
    program: Sequence[float], count: int, constants: list[float], code: list[int]
) -> set[int]:
    """Validates ``program``, appends its code (constants indexed) and returns its flags."""
    read: set[int] = set()
    depth = 0
    at = 0
    while at < len(program):
        op = int(program[at])
        if op in (OP.HIT, OP.CONST):
            if at + 1 >= len(program):
                raise ValueError("HIT and CONST need an argument")
            arg = program[at + 1]
            if op == OP.HIT:
                flag = int(arg)
                if flag != arg or not 0 <= flag < count:
                    raise ValueError(f"flag {arg!r} outside range({count})")
                read.add(flag)
                code += (op, flag)
            else:
                code += (op, len(constants))
                constants.append(float(arg))
            depth += 1
            at += 2
        elif op in _UNARY and depth >= 1:
            code.append(op)
            at += 1
        elif op in _BINARY and depth >= 2:
            code.append(op)
            depth -= 1
            at += 1
        else:
            raise ValueError(f"opcode {op} at {at}: unknown or missing its operands")
        if depth > STACK:
            raise ValueError(f"a stack deeper than {STACK}")
    if depth != 1:
        raise ValueError("a program leaves one value")
    code.append(int(lib.MW_OP_END))
    return read


def code_point_bytes(text: str, table: bytes) -> bytes:
    """``text`` one byte per character: ``table[ord(c)]`` for each character ``c`` (lone
    surrogates included), in one pass in the C core. ``ValueError`` when a character's code
    point is not below ``len(table)`` (a table of ``sys.maxunicode + 1`` bytes takes any)."""
    count = len(text)
    if not count:
        return b""
    data = text.encode(_UTF32, "surrogatepass")
    out = _alloc("uint8_t[]", count)
    if _code_points(ffi.from_buffer("uint32_t[]", data), count, table, len(table), out):
        raise ValueError("a code point beyond the table")
    return ffi.buffer(out, count)[:]
