"""Tests for branchline.naming: examples, hostile input and properties (hypothesis)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from branchline import naming
from branchline.environment import Environment
from branchline.errors import UsageError

# The targets' rules, written out here independently of the module under test.
BRANCH_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
SQL_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
SQL_KEYWORDS = {"all", "select", "table", "user", "order", "group", "from", "where", "null"}
SQL_KEYWORDS |= {"true", "false", "end", "do", "is", "join", "left", "right", "with"}

SHA = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"
ZONES = ["codex.localhost", "revelations.studio", "localhost", "a.b.c.example.com"]
HOSTILE = [
    "'; DROP TABLE x;--",
    "$(rm -rf /)",
    "`reboot`",
    'a"b',
    "a\x00b",
    "ünïcödé/🙂",
    "🙂",
    "x" * 300,
    "feature/" + "é" * 150 + "/" + "y" * 150,
    "",
    " ",
    "-",
    "--",
    "_",
    "!!!///...",
    "../../etc/passwd",
    "a\nb",
    "\ud800",  # a lone surrogate
    "Ω≈ç√∫",
    "\uff26\uff35\uff2c\uff2c",  # FULLWIDTH "FULL"
]
UNSAFE_CHARS = set("'\"`$()/\\;: \n\x00.")


def h8(text: str) -> str:
    """The expected hash suffix: first 8 hex digits of SHA-256 of the original text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def is_branch_id(name: str, max_len: int = 63) -> bool:
    return len(name) <= max_len and BRANCH_ID.fullmatch(name) is not None


def is_host_name(host: str) -> bool:
    labels = host.split(".")
    return len(host) <= 253 and all(DNS_LABEL.fullmatch(label) for label in labels)


def is_sql_ident(name: str, max_len: int = 63) -> bool:
    return (
        len(name.encode()) <= max_len
        and SQL_IDENT.fullmatch(name) is not None
        and name not in SQL_KEYWORDS
        and not name.startswith("pg_")
    )


environments = st.sampled_from([Environment.production(), Environment.local()]) | st.integers(
    1, naming.MAX_PR
).map(Environment.preview)
E = Environment.parse
canonical_slugs = st.from_regex(r"[a-z0-9]{1,12}(-[a-z0-9]{1,12}){0,4}", fullmatch=True)
names = st.text() | canonical_slugs | st.sampled_from(HOSTILE)

# Edits that turn a name into a different name that reads almost the same.
VARIANTS: list[Callable[[str], str]] = [
    str.upper,
    str.title,
    str.swapcase,
    lambda s: s.replace("-", "/"),
    lambda s: s.replace("-", "_"),
    lambda s: s.replace("-", "--"),
    lambda s: s.replace("-", " "),
    lambda s: s + "-",
    lambda s: "-" + s,
    lambda s: s + "/",
    lambda s: s + " ",
    lambda s: s + "!",
    lambda s: s + "\u0301",  # a combining accent, dropped by normalisation
    lambda s: s + "🙂",
    lambda s: unicodedata.normalize("NFD", s),
    lambda s: unicodedata.normalize("NFKC", s),
    lambda s: s + "-" + h8(s),
    lambda s: naming.slug(s),  # another input's generated name, used as an input
    lambda s: naming.sql_identifier(s),
    lambda s: s + "-preview-8",  # a name that ends like an environment
    lambda s: s + "-local",
]


# -- concrete examples ------------------------------------------------------------------


def test_spec_examples() -> None:
    assert naming.branch_for_pr(8) == "pr-8"
    assert naming.e2e_branch_for_pr(8) == "pr-8-e2e"
    assert naming.branch_for_push("refs/heads/feature-login", SHA) == "push-feature-login-1a2b3c4d"
    assert Environment.preview(8).name == "preview-8"
    assert naming.worker_name("api", E("preview-8")) == "api-preview-8"
    assert naming.worker_name("ecom-api", E("production")) == "ecom-api-production"
    assert naming.worker_name("web", E("local")) == "web-local"
    assert (
        naming.host_name("api", E("preview-8"), "codex.localhost")
        == "api-preview-8.codex.localhost"
    )
    assert (
        naming.host_name("api", E("production"), "revelations.studio") == "api.revelations.studio"
    )
    assert naming.host_name("auth", E("local"), "codex.localhost") == "auth-local.codex.localhost"
    assert naming.dev_branch("alice") == "dev-alice"
    assert Environment.production().name == naming.PRODUCTION_BRANCH == "production"


def test_canonical_names_are_kept_and_others_get_the_hash_of_the_original() -> None:
    assert naming.slug("feature-x") == "feature-x"
    assert naming.slug("Feature/X") == "feature-x-" + h8("Feature/X")
    assert naming.slug("feature_x") == "feature-x-" + h8("feature_x")
    assert naming.slug("") == "x-" + h8("")
    assert naming.slug("x") == "x"
    assert naming.dns_label("API") == "api-" + h8("API")
    assert naming.sql_identifier("users") == "users"
    assert naming.sql_identifier("pr_8") == "pr_8"
    assert naming.sql_identifier("pr-8") == "pr_8_" + h8("pr-8")


def test_names_that_look_hashed_are_hashed_again() -> None:
    hashed = naming.slug("Feature/X")
    assert naming.slug(hashed) == "feature-x-" + h8("Feature/X") + "-" + h8(hashed)
    assert naming.slug("release-20240101") == "release-20240101-" + h8("release-20240101")
    assert naming.sql_identifier("a_deadbeef") == "a_deadbeef_" + h8("a_deadbeef")


def test_push_branches() -> None:
    slash = naming.branch_for_push("refs/heads/feature/login", SHA)
    assert slash == f"push-feature-login-{h8('feature/login')}-1a2b3c4d"
    assert naming.branch_for_push("feature-login", SHA.upper()) == "push-feature-login-1a2b3c4d"
    assert naming.branch_for_push("main", "ABCDEF1") == "push-main-abcdef1"
    assert naming.branch_for_push("main", "f" * 64) == "push-main-ffffffff"
    long_name = naming.branch_for_push("refs/heads/" + "b" * 300, SHA)
    assert len(long_name) == 63
    assert long_name.startswith("push-bbb")
    assert long_name.endswith("-1a2b3c4d")


@pytest.mark.parametrize("sha", ["", "123456", "g" * 40, "f" * 65, " 1a2b3c4d", "1a2b3c4\n"])
def test_push_rejects_bad_shas(sha: str) -> None:
    with pytest.raises(UsageError) as caught:
        naming.branch_for_push("main", sha)
    assert "hex" in caught.value.hint


def test_git_refs() -> None:
    assert naming.git_ref_to_branch("refs/heads/main") == "main"
    assert naming.git_ref_to_branch("refs/heads/feature/x") == "feature/x"
    assert naming.git_ref_to_branch("feature/x") == "feature/x"
    assert naming.git_ref_to_branch("heads/x") == "heads/x"


@pytest.mark.parametrize("ref", ["", "refs/heads/", "refs/tags/v1.0", "refs/pull/8/merge"])
def test_git_refs_that_are_not_branches(ref: str) -> None:
    with pytest.raises(UsageError) as caught:
        naming.git_ref_to_branch(ref)
    assert "refs/heads/main" in caught.value.hint


@pytest.mark.parametrize("pr", [0, -1, -8, True, False, 8.0, "8", None, 2**31])
def test_pr_numbers_must_be_positive_ints(pr: object) -> None:
    for function in (naming.branch_for_pr, naming.e2e_branch_for_pr, Environment.preview):
        with pytest.raises(UsageError) as caught:
            function(pr)  # type: ignore[arg-type]
        assert "positive" in caught.value.hint


def test_largest_pr_still_fits() -> None:
    env = Environment.preview(naming.MAX_PR)
    assert DNS_LABEL.fullmatch(naming.worker_name("s" * 100, env))
    assert is_host_name(naming.host_name("s" * 100, env, "example.com"))


@pytest.mark.parametrize(
    "environment",
    ["", "staging", "Production", "preview-0", "preview-08", "preview-", "preview-8 ", "pr-8"],
)
def test_unknown_environments(environment: str) -> None:
    with pytest.raises(UsageError) as caught:
        Environment.parse(environment)
    assert "preview-<pr>" in caught.value.hint


def test_zones_are_normalised() -> None:
    assert naming.normalize_zone("Revelations.Studio.") == "revelations.studio"
    assert (
        naming.host_name("api", E("production"), "Revelations.Studio.") == "api.revelations.studio"
    )
    assert naming.normalize_zone("xn--bcher-kva.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "zone",
    [
        "",
        ".",
        "..",
        "a..b",
        ".example.com",
        "-bad.com",
        "bad-.com",
        "has space.com",
        "under_score.com",
        "ünï.com",
        "\u212a.com",  # KELVIN SIGN lower-cases to ASCII "k"
        "example.com\n",
        "10.0.0.1",
        "x" * 64 + ".com",
        ".".join(["abc"] * 64),  # 255 characters
        "api.$(rm -rf /).com",
    ],
)
def test_bad_zones(zone: str) -> None:
    with pytest.raises(UsageError) as caught:
        naming.host_name("api", E("production"), zone)
    assert "zone" in caught.value.hint


def test_host_names_over_253_are_refused() -> None:
    zone = ".".join(["a" * 61] * 4)  # 247 characters: a valid zone
    assert naming.normalize_zone(zone) == zone
    assert len(naming.host_name("api", E("production"), zone)) <= 253
    with pytest.raises(UsageError):
        naming.host_name("x" * 80, E("preview-8"), zone)


def test_production_hosts_never_meet_preview_hosts() -> None:
    zone = "example.com"
    preview = naming.host_name("api", E("preview-8"), zone)
    assert naming.host_name("api-preview-8", E("production"), zone) != preview
    assert naming.host_name("api-local", E("production"), zone) != naming.host_name(
        "api", E("local"), zone
    )
    assert naming.host_name("preview-8", E("production"), zone) == "preview-8.example.com"


def test_sql_identifiers() -> None:
    for keyword in sorted(SQL_KEYWORDS):
        assert naming.sql_identifier(keyword) == f"{keyword}_{h8(keyword)}"
        assert naming.sql_identifier(keyword.upper()) != naming.sql_identifier(keyword)
    assert naming.sql_identifier("8ball") == "_8ball_" + h8("8ball")
    assert naming.sql_identifier("_8ball") == "_8ball"
    assert naming.sql_identifier("pg_catalog") == "_pg_catalog_" + h8("pg_catalog")
    assert naming.sql_identifier("Users") == "users_" + h8("Users")
    assert naming.sql_identifier("'; DROP TABLE x;--") == "drop_table_x_" + h8("'; DROP TABLE x;--")


def test_quote_ident() -> None:
    assert naming.quote_ident("users") == '"users"'
    assert naming.quote_ident('a"b') == '"a""b"'
    assert naming.quote_ident('"; DROP TABLE x; --') == '"""; DROP TABLE x; --"'
    assert naming.quote_ident("é" * 31) == '"' + "é" * 31 + '"'


@pytest.mark.parametrize("name", ["", "a\x00b", "é" * 32, "x" * 64, "\ud800"])
def test_quote_ident_refuses_what_postgres_cannot_hold(name: str) -> None:
    with pytest.raises(UsageError):
        naming.quote_ident(name)


def test_validate_branch_id() -> None:
    for good in ["production", "pr-8", "pr-8-e2e", "push-main-1a2b3c4d", "dev-alice", "a" * 63]:
        assert naming.validate_branch_id(good) == good
    for bad in ["", "-pr", "pr-", "pr--8", "PR-8", "pr_8", "a" * 64, "../x", "pr-8\n"]:
        with pytest.raises(UsageError):
            naming.validate_branch_id(bad)


def test_dev_branch_needs_a_name() -> None:
    for empty in ["", "   "]:
        with pytest.raises(UsageError):
            naming.dev_branch(empty)


@pytest.mark.parametrize("max_len", [-1, 0, 9, 15])
def test_too_small_max_len_is_a_programming_error(max_len: int) -> None:
    with pytest.raises(ValueError, match="max_len"):
        naming.slug("abc", max_len)
    with pytest.raises(ValueError, match="max_len"):
        naming.sql_identifier("abc", max_len)


# -- hostile input ----------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_input_gives_safe_names(text: str) -> None:
    outputs = [
        naming.slug(text),
        naming.dns_label(text),
        naming.sql_identifier(text),
        naming.branch_for_push("refs/heads/" + text if text else "x", SHA),
        naming.worker_name(text, E("preview-8")),
        naming.host_name(text, E("preview-8"), "codex.localhost").split(".")[0],
    ]
    if text.strip():
        outputs.append(naming.dev_branch(text))
    for output in outputs:
        assert not UNSAFE_CHARS & set(output), output
        assert output.isascii()
        assert 0 < len(output) <= 63
    assert is_branch_id(naming.slug(text))
    assert is_sql_ident(naming.sql_identifier(text))


def test_hostile_inputs_do_not_collide() -> None:
    assert len({naming.slug(text) for text in HOSTILE}) == len(HOSTILE)
    assert len({naming.sql_identifier(text) for text in HOSTILE}) == len(HOSTILE)


# -- properties -------------------------------------------------------------------------


@given(text=names, max_len=st.integers(naming.MIN_MAX_LEN, 120))
def test_slug_is_a_bounded_branch_id(text: str, max_len: int) -> None:
    result = naming.slug(text, max_len)
    assert is_branch_id(result, max_len)
    assert result == naming.slug(text, max_len)


@given(text=names)
def test_dns_label_is_a_dns_label(text: str) -> None:
    assert DNS_LABEL.fullmatch(naming.dns_label(text))


@given(text=names, max_len=st.integers(naming.MIN_MAX_LEN, 120))
def test_sql_identifier_is_a_bounded_unquoted_identifier(text: str, max_len: int) -> None:
    result = naming.sql_identifier(text, max_len)
    assert is_sql_ident(result, max_len)
    assert result == naming.sql_identifier(text, max_len)


@given(text=canonical_slugs)
def test_canonical_slugs_are_kept(text: str) -> None:
    assume(len(text) <= 63 and not re.search(r"-[0-9a-f]{8}$", text))
    assert naming.slug(text) == text


@given(branch=names, sha=st.from_regex(r"[0-9a-fA-F]{7,64}", fullmatch=True))
def test_push_branches_are_branch_ids(branch: str, sha: str) -> None:
    assume(branch and not branch.startswith("refs/"))
    result = naming.branch_for_push(branch, sha)
    assert is_branch_id(result)
    assert result.startswith("push-")
    assert result.endswith("-" + sha.lower()[:8])


@given(pr=st.integers(1, naming.MAX_PR))
def test_pr_names(pr: int) -> None:
    assert is_branch_id(naming.branch_for_pr(pr))
    assert is_branch_id(naming.e2e_branch_for_pr(pr))
    assert Environment.parse(Environment.preview(pr).name) == Environment.preview(pr)


@given(service=names, environment=environments, zone=st.sampled_from(ZONES))
def test_workers_and_hosts_are_valid(service: str, environment: Environment, zone: str) -> None:
    worker = naming.worker_name(service, environment)
    assert DNS_LABEL.fullmatch(worker)
    assert worker.endswith("-" + environment.name)
    host = naming.host_name(service, environment, zone)
    assert is_host_name(host)
    assert host.endswith("." + zone)


@given(a=names, b=names)
def test_distinct_inputs_give_distinct_names(a: str, b: str) -> None:
    assume(a != b)
    assert naming.slug(a) != naming.slug(b)
    assert naming.sql_identifier(a) != naming.sql_identifier(b)
    assert naming.worker_name(a, E("preview-8")) != naming.worker_name(b, E("preview-8"))


@settings(max_examples=300)
@given(base=names, variant=st.sampled_from(VARIANTS))
def test_near_identical_inputs_give_distinct_names(
    base: str, variant: Callable[[str], str]
) -> None:
    other = variant(base)
    assume(other != base)
    assert naming.slug(base) != naming.slug(other)
    assert naming.dns_label(base) != naming.dns_label(other)
    assert naming.sql_identifier(base) != naming.sql_identifier(other)
    assume(base.strip() and other.strip())
    assert naming.dev_branch(base) != naming.dev_branch(other)
    if not base.startswith("refs/") and not other.startswith("refs/"):
        assert naming.branch_for_push(base, SHA) != naming.branch_for_push(other, SHA)


@given(a=names, b=names, env_a=environments, env_b=environments)
def test_hosts_are_unique_per_service_and_environment(
    a: str, b: str, env_a: Environment, env_b: Environment
) -> None:
    assume((a, env_a) != (b, env_b))
    assert naming.host_name(a, env_a, "example.com") != naming.host_name(b, env_b, "example.com")
    assert naming.worker_name(a, env_a) != naming.worker_name(b, env_b)


@given(service=names, environment=environments)
def test_production_subdomain_cannot_pose_as_another_environment(
    service: str, environment: Environment
) -> None:
    assume(not environment.is_production)
    impostor = naming.worker_name(service, environment)  # "<service>-<environment>"
    real = naming.host_name(service, environment, "example.com")
    assert naming.host_name(impostor, Environment.production(), "example.com") != real


# -- bulk collision check ---------------------------------------------------------------


ENVS = [E(name) for name in ("production", "local", "preview-8", "preview-80")]


def bulk_names() -> list[str]:
    """Over 5,000 distinct names, crowded with case, punctuation and length variants."""
    words = ["feature", "fix", "login", "api", "release", "Über", "db", "x"]
    bases = [f"{a}/{b}-{i}" for a in words for b in words for i in range(12)]
    bases += [f"{a}-{b}" for a in words[:5] for b in words[:5]]  # canonical slugs
    found: list[str] = []
    for base in bases:
        found += [variant(base) for variant in VARIANTS]
        found.append(base)
    found += ["a" * 300 + str(i) for i in range(300)]  # same 54-character readable prefix
    found += [str(i) + "a" * 300 for i in range(300)]
    found += HOSTILE
    return list(dict.fromkeys(found))


def test_bulk_names_do_not_collide() -> None:
    inputs = bulk_names()
    assert len(inputs) >= 5000
    outputs: dict[str, Callable[[str], str]] = {
        "slug": naming.slug,
        "sql_identifier": naming.sql_identifier,
        "worker_name": lambda name: naming.worker_name(name, E("preview-8")),
        "host_name": lambda name: naming.host_name(name, E("production"), "example.com"),
        "preview_host": lambda name: naming.host_name(name, E("preview-8"), "example.com"),
        "branch_for_push": lambda name: naming.branch_for_push(name or "x", SHA),
    }
    for label, function in outputs.items():
        results = [function(name) for name in inputs]
        if label == "branch_for_push":  # "" and "x" both name branch "x" here
            results = [function(name) for name in inputs if name]
            assert len(set(results)) == len(results), label
        else:
            assert len(set(results)) == len(inputs), label
    hosts = [naming.host_name(name, env, "example.com") for name in inputs for env in ENVS]
    assert len(set(hosts)) == len(inputs) * len(ENVS)


@pytest.mark.parametrize("bad", [0, -1, naming.MAX_PR + 1, 2**63, True, False, 1.5, 1.0, "2", None])
def test_pr_numbers_are_whole_numbers_from_1_to_2_31_minus_1(bad: object) -> None:
    with pytest.raises(UsageError, match="Invalid pull request number") as refused:
        naming.check_pr_number(bad)
    assert "2147483647" in (refused.value.hint or "")
    assert naming.check_pr_number(1) == 1 and naming.check_pr_number(naming.MAX_PR) == naming.MAX_PR


@pytest.mark.parametrize(
    ("text", "shown"),
    [("main", "main"), ("a\nb", "a\\nb"), ("\x1b[31mred", "\\x1b[31mred"),
     ("\u202eevil", "\\u202eevil"), ("caf\u00e9", "caf\u00e9"), ("tab\there", "tab\\there")],
)  # fmt: skip
def test_printable_escapes_what_would_break_or_fool_a_listing(text: str, shown: str) -> None:
    assert naming.printable(text) == shown
    assert "\n" not in naming.printable(text) and "\x1b" not in naming.printable(text)


def test_printable_cuts_long_text() -> None:
    assert naming.printable("x" * 500, 80) == "x" * 80 + "..."
