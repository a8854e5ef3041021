"""The typed data every stage after reading works with: a `Message`, an `Example` (a validated
conversation), and the `DataIssue`/`DataError` that name a problem by file, line and field.

Modelled on torchtune's `Message` (torchtune/data/_messages.py): one class for every message, a
format's reader (fastft.data.formats) turns a record into a list of them. Unlike torchtune's,
content is text only (fastft refuses multimodal parts) and the loss flag is the data's own
`weight` (0 or 1), because that is the field users write. The chat template reads plain dicts
(`Message.to_dict`), the shape OpenAI and Hugging Face templates agree on.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.errors import FastftError

# The chat roles a conversation is made of; "tool" carries a tool's answer (fastft.data.tools).
Role = Literal["system", "user", "assistant", "tool"]
ROLES = ("system", "user", "assistant")
TOOL = "tool"

# How many issues DataError's message lists before summarising the rest.
MAX_LISTED_ISSUES = 50


@dataclass(frozen=True)
class Where:
    """The record fields a message was read from: problems found later still name them."""
    role: str
    content: str


@dataclass
class Message:
    """One chat message. `role` is None only while a record is being read and its role field was
    invalid (the record is then reported, never kept)."""
    role: Role | None
    content: Any                                  # a non-empty string once validated
    tool_calls: list[dict] | None = None          # an assistant turn's calls (canonical)
    tool_call_id: str | None = None               # a tool response: the call it answers
    name: str | None = None                       # a tool response: the tool that answered
    weight: int = 1                               # 0: context only, no loss (assistant turns)
    where: Where | None = field(default=None, compare=False, repr=False)

    @property
    def trained(self) -> bool:
        """Whether the turn carries loss: an assistant message whose weight is not 0."""
        return self.role == "assistant" and self.weight != 0

    def to_dict(self) -> dict:
        """What a chat template reads: role and content, and the tool fields that are set."""
        out = {"role": self.role, "content": self.content}
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        out.update({k: v for k, v in (("name", self.name), ("tool_call_id", self.tool_call_id))
                    if v is not None})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Message":
        """A message from its dict form (as to_dict writes it, or with a "weight")."""
        return cls(d["role"], d["content"], d.get("tool_calls"), d.get("tool_call_id"),
                   d.get("name"), d.get("weight", 1))


@dataclass
class Example:
    messages: list[Message]  # an optional system message, then turns ending with the assistant
    line: int  # 1-based line where this record starts
    format: str  # one of fastft.data.formats.FORMATS
    tools: list[dict] | None = None  # the record's tool schemas, canonical (fastft.data.tools)

    def __post_init__(self) -> None:
        # Tests and callers may build an example from dicts (the chat form): typed from here on.
        self.messages = [m if isinstance(m, Message) else Message.from_dict(m) for m in self.messages]

    @property
    def no_loss(self) -> tuple[int, ...]:
        """Indexes of assistant messages given "weight": 0: rendered as context, carrying no loss."""
        return tuple(i for i, m in enumerate(self.messages) if m.role == "assistant" and not m.trained)

    def chat(self) -> list[dict]:
        """The messages as a chat template reads them."""
        return [m.to_dict() for m in self.messages]


def shown_path(path: str) -> str:
    """``path`` as a message shows it: quoted (Python string escapes) when it holds a newline or
    another unprintable character, which would break the one-line ``file:line:`` format."""
    return path if path.isprintable() else repr(path)


@dataclass
class DataIssue:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{shown_path(self.path)}:{self.line}: {self.field}: {self.message}"


@dataclass
class Dataset:
    path: str
    examples: list[Example] = field(default_factory=list)
    issues: list[DataIssue] = field(default_factory=list)  # in file order
    warnings: list[DataIssue] = field(default_factory=list)  # worth a look; the record is kept
    skipped: int = 0  # records dropped because they had issues
    sha256: str = ""  # of the bytes read: what a run records, and what its resume compares

    @property
    def formats(self) -> collections.Counter:
        """Format name -> number of valid examples in that format."""
        return collections.Counter(e.format for e in self.examples)


class DataError(FastftError, ValueError):
    """The dataset has problems; ``issues`` lists every one of them."""

    def __init__(self, path: str | os.PathLike, issues: list[DataIssue]):
        self.path = os.fspath(path)
        self.issues = list(issues)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.issues)
        head = f"{shown_path(self.path)}: {n} problem{'s' if n != 1 else ''} in dataset:"
        lines = [head]
        lines.extend(f"  {issue}" for issue in self.issues[:MAX_LISTED_ISSUES])
        if n > MAX_LISTED_ISSUES:
            lines.append(f"  ... and {n - MAX_LISTED_ISSUES} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):
        return (type(self), (self.path, self.issues))


class RecordError(ValueError):
    """A record is invalid.  ``field``/``message`` describe the first problem;
    ``problems`` holds every ``(field, message)`` found in the record."""

    def __init__(self, field: str, message: str, problems: list[tuple[str, str]] | None = None):
        self.field = field
        self.message = message
        self.problems = list(problems) if problems else [(field, message)]
        super().__init__(f"{field}: {message}")

    def __reduce__(self):
        return (type(self), (self.field, self.message, self.problems))
