"""The README is a front door and docs/ the reference: the README stays short, every relative link lands on a
file and heading that exist, the commands it gives are the ones CI runs, and the reference pages name every
CLI command and every config key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """Markdown without its code: links and headings inside code blocks or spans are not links or headings."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): the rendered text lowercased, punctuation other than
    '-' and '_' dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")  # a repeated heading gets -1, -2, ...
    return found


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; the reference belongs in docs/"


def test_docs_pages_exist():
    names = {page.name for page in DOCS}
    for needed in ("cli.md", "gate.md", "sql-skill.md", "serving.md", "security.md", "configuration.md"):
        assert needed in names


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_slug_follows_github():
    assert slug("The SQL-migration skill: `--preset sql-migrations`") == "the-sql-migration-skill---preset-sql-migrations"
    assert slug("What the gate's number means, and which rows decide") == "what-the-gates-number-means-and-which-rows-decide"
    assert slug("A human budget (optional)") == "a-human-budget-optional"
    assert slug("`[curate.llm]`") == "curatellm"


def test_readme_commands_are_the_ones_ci_runs():
    """The README's two commands, and what it says the test command runs is .ci/run's last line, word for word."""
    text = README.read_text()
    blocks = [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)]
    assert "pip install -r requirements.txt && python -m core demo" in blocks
    assert "bash .ci/run" in blocks
    last = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()][-1].strip()
    assert f"`{last}`" in " ".join(text.split()), f"the README should say .ci/run runs `{last}`"


def test_readme_says_which_rows_decide():
    """Issue 25: the README itself says which rows decide, which estimate is shown and what each set of rows is
    for (docs/gate.md has the full text)."""
    text = " ".join(README.read_text().split())
    for words in ("Which rows decide", "The estimate shown", "**Seed**", "**selection**", "**gate** rows",
                  "**traffic probe**", "traffic labels", "docs/gate.md"):
        assert words in text, words


def test_every_cli_command_is_documented(capsys):
    from core.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    commands = re.search(r"\{([a-z,-]+)\}", capsys.readouterr().out).group(1).split(",")
    cli = (ROOT / "docs" / "cli.md").read_text()
    rows = {m.group(1) for m in re.finditer(r"^\| `([a-z-]+)[ `\\|]", cli, re.M)}
    rows |= {name for m in re.finditer(r"^\| `([a-z-]+(?:\\\|[a-z-]+)+)", cli, re.M) for name in m.group(1).split("\\|")}
    assert len(commands) > 20
    assert not set(commands) - rows, f"docs/cli.md has no row for {sorted(set(commands) - rows)}"


def _config_keys() -> set[str]:
    from pydantic import BaseModel

    from core.config import Config

    def walk(model: BaseModel, prefix: str):
        for name in type(model).model_fields:
            value = getattr(model, name)
            yield from walk(value, f"{prefix}{name}.") if isinstance(value, BaseModel) else [prefix + name]

    gates = "|".join(k for k, v in Config().gates if isinstance(v, BaseModel))
    return {re.sub(rf"^gates\.({gates})\.", "gates.NAME.", key) for key in walk(Config(), "")}


def test_every_config_key_is_documented():
    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(key for key in _config_keys() if f"| `{key}` |" not in page)
    assert not missing, f"docs/configuration.md has no row for {missing}"


def test_config_keys_named_in_docs_exist():
    """A key the README or a docs page names (`curate.sandbox`, `gates.traffic_labels_per_cycle`) is one the
    engine reads: a renamed or retired key is caught here, not by a reader."""
    keys = _config_keys()
    sections = "|".join(sorted({key.split(".")[0] for key in keys}))
    pattern = re.compile(rf"`((?:{sections})\.[a-z_]+(?:\.[a-z_]+)*)")
    named = {(page.name, m.group(1)) for page in [README, *DOCS] for m in pattern.finditer(page.read_text())}
    prefixes = {key.rsplit(".", i)[0] for key in keys for i in range(key.count(".") + 1)}
    unknown = sorted(f"{name}: {key}" for name, key in named if key not in prefixes)
    assert not unknown, f"not config keys: {unknown}"
