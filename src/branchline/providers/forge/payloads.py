"""GitHub's webhook bodies as typed models: what branchline reads of them, checked.

Only the fields dispatch needs are modelled; everything else GitHub sends is
ignored. Strict where a wrong type would be stored or acted on: PR numbers are
`int`s (never a bool, a float or a string) from 1 to 2^31 - 1, refs keep git's
rules (`naming.ref_problem`), commit ids are hex, and text that reaches the store
or a listing has a bounded length and nothing Postgres cannot store (NUL, lone
surrogates); names have no control or bidirectional characters either (titles, in
any script, may: listings escape them). `parse_json` refuses a body too deeply
nested to parse, and `malformed` turns a `ValidationError` into field paths and
reasons without echoing the values sent.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from branchline import events, naming
from branchline.errors import UsageError

__all__ = [
    "MalformedPayloadError",
    "PingPayload",
    "PullRequestPayload",
    "PushPayload",
    "malformed",
    "parse_json",
    "problems",
]

_SHOWN_PROBLEMS = 5


class MalformedPayloadError(ValueError):
    """A body that is not what its event kind must be; `errors` lists (field, problem)."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


# -- field types -------------------------------------------------------------------------


def _storable(text: str) -> str:
    """Refuse what Postgres cannot hold in text: NUL and lone surrogates."""
    for char in text:
        if char == "\x00" or "\ud800" <= char <= "\udfff":
            raise ValueError(f"contains the character U+{ord(char):04X}, which cannot be stored")
    return text


def _name(text: str) -> str:
    """GitHub's names (logins, repositories, labels) are plain: anything that would
    hide or reorder text in a listing is refused."""
    for char in _storable(text):
        if naming.printable(char) != char:
            raise ValueError(f"contains the non-printing character U+{ord(char):04X}")
    return text


def _ref(ref: str) -> str:
    """A full ref by git's rules; under refs/heads/, by a branch's too."""
    problem = naming.ref_problem(ref)
    if problem is None and ref.startswith("refs/heads/"):
        problem = naming.branch_name_problem(ref.removeprefix("refs/heads/"))
    if problem is not None:
        raise ValueError(f"not a git ref: {problem}")
    return ref


def _branch(name: str) -> str:
    problem = naming.branch_name_problem(name)
    if problem is not None:
        raise ValueError(f"not a git branch name: {problem}")
    return name


def _commit(sha: str) -> str:
    try:
        return events.commit_id(sha)
    except UsageError:
        raise ValueError("not a commit id (7 to 64 lower-case hexadecimal digits)") from None


PrNumber = Annotated[int, Field(strict=True, ge=1, le=naming.MAX_PR)]
"""A pull request's number: 1 to 2^31 - 1, a JSON integer (not true, not 1.5)."""
Name = Annotated[str, Field(max_length=256), AfterValidator(_name)]
# Free text in any script: only what cannot be stored is refused; listings escape the rest.
Title = Annotated[str, Field(max_length=1024), AfterValidator(_storable)]  # GitHub's: 256
Ref = Annotated[str, Field(max_length=naming.MAX_REF + len("refs/heads/")), AfterValidator(_ref)]
Branch = Annotated[str, Field(max_length=naming.MAX_REF), AfterValidator(_branch)]
Commit = Annotated[str, Field(max_length=64), AfterValidator(_commit)]


class _Model(BaseModel):
    # Strict: JSON's types as they came (no "1" for 1, no 1.0 for 1, no 1 for true);
    # unknown fields are GitHub's business and ignored.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Repository(_Model):
    full_name: Name


class User(_Model):
    login: Name


class Label(_Model):
    name: Name


# -- push -------------------------------------------------------------------------------


class PushPayload(_Model):
    """A `push` delivery: a branch (or a tag) moved, was created or deleted."""

    ref: Ref
    after: Commit
    before: Commit | None = None
    deleted: bool = False
    repository: Repository | None = None

    @property
    def branch(self) -> str | None:
        """The branch pushed (None for a tag or any other ref)."""
        branch = self.ref.removeprefix("refs/heads/")
        return branch if branch != self.ref else None  # a branch's name: checked by `_ref`


# -- pull_request -------------------------------------------------------------------------


class Side(_Model):
    """`head` or `base` of a pull request."""

    ref: Branch
    sha: Commit
    repo: Repository | None = None  # None: the head's fork was deleted


class PullRequest(_Model):
    number: PrNumber | None = None
    head: Side
    base: Side
    title: Title | None = None
    merged: bool | None = None


class PullRequestPayload(_Model):
    """A `pull_request` delivery (opened, synchronize, reopened, closed, labeled ...)."""

    action: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_name)]
    number: PrNumber
    pull_request: PullRequest
    repository: Repository | None = None
    sender: User | None = None
    label: Label | None = None

    @model_validator(mode="after")
    def _one_number(self) -> PullRequestPayload:
        inner = self.pull_request.number
        if inner is not None and inner != self.number:
            raise ValueError(f"number {self.number} and pull_request.number {inner} differ")
        return self

    @property
    def from_fork(self) -> bool:
        """Whether the head lives in another repository than the base (a deleted fork,
        with no repository, is a stranger too)."""
        head, base = self.pull_request.head.repo, self.pull_request.base.repo
        if base is None:
            return False
        return head is None or head.full_name.lower() != base.full_name.lower()

    @property
    def head_repository(self) -> str:
        """Where the head lives: "" for the base's own repository, "owner/name" for a
        fork, and "#<number>" for a deleted fork (its name is gone)."""
        if not self.from_fork:
            return ""
        head = self.pull_request.head.repo
        return head.full_name.lower() if head is not None else f"#{self.number}"


# -- ping -------------------------------------------------------------------------------


class PingPayload(_Model):
    """`ping`, sent when a webhook is made: only its zen is answered back."""

    zen: Annotated[str, Field(max_length=1024)] = ""

    @property
    def shown_zen(self) -> str:
        return naming.printable(self.zen, 200)


# -- the body ------------------------------------------------------------------------------


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; `MalformedPayloadError` when it is not JSON or not an
    object. Python's parser recurses, so a body of a thousand '[' ends in
    RecursionError: that is a malformed body too (GitHub's nest about 6 levels)."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise MalformedPayloadError("the body is nested too deeply to be a webhook") from None
    except (ValueError, UnicodeDecodeError):
        raise MalformedPayloadError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise MalformedPayloadError("the body is not a JSON object")
    return payload


def problems(error: ValidationError) -> list[tuple[str, str]]:
    """(field path, what is wrong) for each problem, never the value sent."""
    found = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        path = ".".join(str(part) for part in item["loc"]) or "the body"
        message = str(item["msg"]).removeprefix("Value error, ")
        found.append((naming.printable(path, 120), message))
    return found


def malformed(kind: str, error: ValidationError) -> MalformedPayloadError:
    """The error a `kind` payload that failed its model gives (at most 5 problems said)."""
    found = problems(error)
    said = "; ".join(f"{path}: {problem}" for path, problem in found[:_SHOWN_PROBLEMS])
    more = len(found) - _SHOWN_PROBLEMS
    if more > 0:
        said += f"; and {more} more"
    return MalformedPayloadError(f"the {kind} payload is malformed: {said}", found)
