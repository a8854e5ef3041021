"""A dataset file's bytes -> lines of text -> JSON values, and why a file cannot be read at all
(no regular file, too large, compressed, tabular, UTF-16/32, binary). Nothing here knows a
record format: fastft.data.read hands each JSON value to fastft.data.formats.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import shlex
import stat
from typing import Any

from .messages import DataError, DataIssue

# The file is read whole, and its bytes, their decoded text and the parsed records are all held
# at once (several times its size in memory): past 4 GiB that exhausts an ordinary machine
# before any report, so a larger file is refused up front, with this limit named.
MAX_DATA_BYTES = 4 * 1024**3

BOM = b"\xef\xbb\xbf"
# The whitespace JSON allows between values.
WS = re.compile(r"[ \t\n\r]*")


def command(tool: str, path: str, tag: str) -> str:
    """A suggested shell command that writes a converted copy of ``path``: ``tool path >
    path.TAG.ext``, quoted for the shell (a name a message cannot show whole becomes FILE)."""
    path = path if path.isprintable() else "FILE"
    root, ext = os.path.splitext(path)
    return f"{tool} {shlex.quote(path)} > {shlex.quote(f'{root}.{tag}{ext}')}"


# UTF-32 first: the UTF-32LE byte order mark (FF FE 00 00) begins with UTF-16LE's (FF FE).
_WIDE_ENCODINGS = (("UTF-32LE", codecs.BOM_UTF32_LE), ("UTF-32BE", codecs.BOM_UTF32_BE),
                   ("UTF-16LE", codecs.BOM_UTF16_LE), ("UTF-16BE", codecs.BOM_UTF16_BE))


def _wide_encoding(raw: bytes) -> tuple[str, str] | None:
    """(encoding, how it was told) of UTF-16/UTF-32 text, by its byte order mark, else by its
    first character: JSON starts with '{', '[' or a space, which read in the wrong width (or
    from UTF-8 bytes) decodes to another character or to none."""
    for name, bom in _WIDE_ENCODINGS:
        if raw.startswith(bom):
            return name, f"byte order mark {bom.hex(' ').upper()}"
    for name, _ in _WIDE_ENCODINGS:
        try:
            first = raw[:4].decode(name)[:1]
        except UnicodeDecodeError:
            continue
        if first and first in "{[ \t\r\n":
            return name, "no byte order mark"
    return None


def _encoding_problem(path: str, raw: bytes) -> str | None:
    """Why the file is no UTF-8 but UTF-16/UTF-32 text, with the iconv command that converts it."""
    wide = _wide_encoding(raw)
    if wide is None:
        return None
    name, how = wide
    return (f"{name} encoded ({how}); fastft reads UTF-8: convert it, e.g. "
            f"{command(f'iconv -f {name} -t UTF-8', path, 'utf8')}")


# Files that are not text at all, by their first bytes: one message for the file, rather than
# one "invalid UTF-8"/"invalid JSON" per line of compressed or columnar bytes.
_MAGIC = (
    (b"\x1f\x8b", "a gzip-compressed file; fastft reads uncompressed JSONL or a JSON array: "
                  "decompress it first (gunzip)"),
    (b"PAR1", "a Parquet file; fastft reads JSONL or a JSON array: convert it, e.g. "
              "pandas.read_parquet(path).to_json(out, orient='records', lines=True)"),
    (b"PK\x03\x04", "a zip archive (or .xlsx); fastft reads JSONL or a JSON array: extract "
                    "or export it first"),
)


_TABULAR = {".csv": "a CSV file", ".tsv": "a TSV file", ".parquet": "a Parquet file",
            ".arrow": "an Arrow file", ".xlsx": "an Excel file", ".gz": "a gzip-compressed file"}


def whole_file_problem(path: str, raw: bytes) -> str | None:
    """Why the file as a whole is no JSONL or JSON array (binary, compressed, tabular), or None."""
    for magic, message in _MAGIC:
        if raw.startswith(magic):
            return message
    encoding = _encoding_problem(path, raw)
    if encoding:
        return encoding
    if b"\x00" in raw[:65536]:  # text never holds NUL; UTF-16/32 without a BOM and binaries do
        return ("a binary file (it holds NUL bytes), or UTF-16/UTF-32 text; fastft reads "
                "UTF-8 JSONL or a JSON array")
    ext = os.path.splitext(path)[1].lower()
    if ext in _TABULAR:
        return (f"{_TABULAR[ext]} (by its name); fastft reads JSONL or a JSON array: "
                f"convert it, e.g. with pandas to_json(orient='records', lines=True)")
    return None


# What a path is when it is no regular file: reading a FIFO with no writer waits forever, and a
# device such as /dev/zero never ends.
_NOT_A_FILE = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
               (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n:,} bytes"


def read_bytes(path: str) -> bytes:
    """The bytes of ``path``; DataError when it is no regular file or is over MAX_DATA_BYTES.
    The kind is told by os.stat before opening: opening a FIFO waits for a writer."""
    def refuse(message: str):
        raise DataError(path, [DataIssue(path, 0, "<file>", message)]) from None

    try:
        st = os.stat(path)
        kind = next((what for test, what in _NOT_A_FILE if test(st.st_mode)), None)
        if kind:
            refuse(f"cannot read: {kind}, not a regular file; give a JSONL or JSON file "
                   f"(data from a pipe: save it to a file first)")
        raw = b""
        if st.st_size <= MAX_DATA_BYTES:
            with open(path, "rb") as f:
                raw = f.read(MAX_DATA_BYTES + 1)  # bounded still: the file may grow meanwhile
    except OSError as e:  # missing, unreadable: the user's to fix, not a traceback
        refuse(f"cannot read: {e.strerror}")
    if max(st.st_size, len(raw)) > MAX_DATA_BYTES:
        refuse(f"over the {_size(MAX_DATA_BYTES)} fastft reads (it holds the file in memory): "
               f"train on a part of it")
    return raw


def decode_lines(raw: bytes) -> tuple[list[str], list[tuple[int, str]]]:
    """Split ``raw`` on newlines and decode each line as UTF-8.

    Returns the decoded lines (undecodable bytes replaced by U+FFFD) and, for
    each undecodable line, ``(line_number, message)``.
    """
    lines: list[str] = []
    bad: list[tuple[int, str]] = []
    offset = 0
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad_bytes = chunk[e.start:e.end]
            bad.append(
                (number, f"invalid UTF-8 at byte {e.start} of the line (byte offset "
                         f"{offset + e.start} in the file): {e.reason} "
                         f"({bad_bytes.hex(' ')!s}); is the file UTF-8 encoded?")
            )
            lines.append(chunk.decode("utf-8", errors="replace"))
        offset += len(chunk) + 1
    return lines, bad


def _json_error_message(e: json.JSONDecodeError, with_line: bool = False) -> str:
    where = f"line {e.lineno} column {e.colno}" if with_line else f"column {e.colno}"
    return f"invalid JSON: {e.msg} ({where})"


class _DuplicateKeys:
    """object_pairs_hook that notes repeated keys, which json.loads resolves silently (the last
    one wins), so that a record holding two "messages" is reported instead of half-read."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict:
        record = dict(pairs)
        if len(record) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen and key not in self.found:
                    self.found.append(key)
                seen.add(key)
        return record


def decode_json(text: str, pos: int | None = None) -> tuple[Any, int, list[str], str | None]:
    """(value, end, duplicate keys, error): the JSON value of a whole line (``pos`` None) or the
    one starting at ``pos``; ``error`` says why there is none."""
    dups = _DuplicateKeys()
    decoder = json.JSONDecoder(object_pairs_hook=dups)
    try:
        if pos is None:
            return decoder.decode(text), len(text), dups.found, None
        value, end = decoder.raw_decode(text, pos)
        return value, end, dups.found, None
    except json.JSONDecodeError as e:
        return None, e.pos, [], _json_error_message(e) if pos is None else e.msg
    except RecursionError:  # json recurses once per level: 100,000 '[' exhaust the stack
        return None, pos or 0, [], "invalid JSON: nested too deeply"
    except ValueError as e:  # int('1' * 5000) is refused (sys.int_info.str_digits_check_threshold)
        return None, pos or 0, [], f"invalid JSON: {str(e).split(';')[0]}"  # not its sys.* advice


def read_lines(path: str) -> tuple[str, list[str], dict[int, str]]:
    """(sha256 of the bytes, their lines decoded, line number -> why it is no UTF-8) of ``path``;
    DataError when the file as a whole cannot be read as text."""
    raw = read_bytes(path)
    problem = whole_file_problem(path, raw)
    if problem:
        raise DataError(path, [DataIssue(path, 0, "<file>", problem)])
    sha256 = hashlib.sha256(raw).hexdigest()
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    lines, bad = decode_lines(raw)
    return sha256, lines, dict(bad)
