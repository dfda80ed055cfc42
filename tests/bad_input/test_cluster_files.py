"""Malformed cluster files: one positioned line per problem, exit 2, nothing written.

Each row is (id, file text or bytes, expected message fragment). Every row runs through
`provision validate` and `provision render -o DIR` in-process; the render must leave a
missing DIR missing and a previous render byte-for-byte as it was.
"""

from __future__ import annotations

import pytest

from provision.cli.root import main
from tests.bad_input.support import Outcome, assert_clear_refusal, snapshot

BASE = "name: demo\nnodes: {count: 1}\n"
UNIT_OK = '"[Service]\\nExecStart=/bin/true\\n"'


def _laughs(levels: int, fan: int) -> str:
    rows = ["l0: &l0 [" + ",".join(['"lol"'] * fan) + "]"]
    rows += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * fan) + "]" for i in range(1, levels)]
    return "\n".join(rows) + "\n" + BASE


def _merge_bomb(levels: int, fan: int) -> str:
    rows = ["m0: &m0 {k0: 1}"]
    rows += [f"m{i}: &m{i} {{<<: [" + ",".join([f"*m{i - 1}"] * fan) + f"], k{i}: 1}}"
             for i in range(1, levels)]
    return "\n".join(rows) + "\n" + BASE


def _deep_block(depth: int) -> str:
    return BASE + "x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, depth)) + \
        "  " * depth + "v\n"


def _unit(extra: str) -> str:
    return BASE + "units:\n  - " + extra + "\n"


CASES = [
    # -- size, depth, bombs --------------------------------------------------------------------
    ("huge-file", "name: demo\n" + "#" * (8 * 1024 * 1024 + 10) + "\n", "larger than 8 MiB"),
    ("huge-scalar-unknown-key", BASE + "junk: " + "x" * (2 * 1024 * 1024) + "\n",
     "unknown key `junk`"),
    ("many-unknown-keys", BASE + "".join(f"k{i}: 1\n" for i in range(2000)), "unknown key"),
    ("deep-flow-list", BASE + "x: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 64"),
    ("deep-flow-map", BASE + "x: " + "{a: " * 200 + "1" + "}" * 200 + "\n",
     "nested deeper than 64"),
    ("deep-block-map", _deep_block(100), "nested deeper than 64"),
    ("unclosed-deep", BASE + "x: " + "[" * 100_000 + "\n", "nested deeper than 64"),
    ("billion-laughs", _laughs(10, 10), "alias bomb"),
    ("billion-laughs-in-key", _laughs(9, 10).replace("name: demo", "name: *l8"), "alias bomb"),
    ("merge-key-bomb", _merge_bomb(12, 9), "alias bomb"),
    ("self-merge", "a: &a {<<: *a}\n" + BASE, "merges a mapping into itself"),
    ("mutual-merge", "a: &a {x: 1, <<: {y: 2, <<: *a}}\n" + BASE,
     "merges a mapping into itself"),
    ("recursive-alias", "a: &a [*a]\n" + BASE, "nested deeper than 64"),
    ("recursive-alias-map", "a: &a {b: *a}\n" + BASE, "nested deeper than 64"),
    ("undefined-alias", "name: *nope\nnodes: {count: 1}\n", "malformed YAML"),
    ("merge-of-scalar", "a: {<<: 5}\n" + BASE, "`<<` merges only mappings"),
    # -- encoding and characters -----------------------------------------------------------
    ("not-utf8", b"name: demo\nnodes: {count: 1}\nx: \xff\xfe\n", "not valid UTF-8"),
    ("latin1", "name: démo\nnodes: {count: 1}\n".encode("latin-1"), "not valid UTF-8"),
    ("utf16", BASE.encode("utf-16"), "not valid UTF-8"),
    ("nul-in-key", "na\x00me: demo\nnodes: {count: 1}\n", "U+0000"),
    ("escape-char", "name: de\x1bmo\nnodes: {count: 1}\n", "U+001B"),
    ("escaped-surrogate", 'name: "\\ud800"\nnodes: {count: 1}\n', "invalid Unicode"),
    ("escaped-nul-in-name", 'name: "de\\0mo"\nnodes: {count: 1}\n', "`name` must be 1-63"),
    ("only-whitespace", "   \n\n  \n", "must be a mapping"),
    ("only-comment", "# nothing\n", "must be a mapping"),
    ("bom-then-list", "\ufeff- a\n", "must be a mapping"),
    # -- structure --------------------------------------------------------------------------
    ("two-documents", BASE + "---\n" + BASE, "malformed YAML"),
    ("scalar-document", "just words\n", "must be a mapping"),
    ("null-key", "~: 1\n" + BASE, "mapping keys must be strings"),
    ("int-key", "1: one\n" + BASE, "mapping keys must be strings"),
    ("list-key", "? [a, b]\n: 1\n" + BASE, "mapping keys must be strings"),
    ("duplicate-nested", "name: demo\nnodes: {count: 1, count: 2}\n", "duplicate key `count`"),
    ("duplicate-quoted-spelling", "name: demo\n'name': x\nnodes: {count: 1}\n",
     "duplicate key `name`"),
    ("duplicate-deep", BASE + "fleet:\n  metadata:\n    a: x\n    a: y\n", "duplicate key `a`"),
    ("python-tag", "name: !!python/object/apply:os.system ['id']\nnodes: {count: 1}\n",
     "name"),
    ("custom-tag", "name: !vault abc\nnodes: {count: 1}\n", "bad value"),
    ("binary-tag", "name: !!binary aGVsbG8=\nnodes: {count: 1}\n", "name"),
    ("bad-timestamp-tag", "name: !!timestamp nope\nnodes: {count: 1}\n", "bad value"),
    ("bad-int-tag", "name: demo\nnodes: {count: !!int x}\n", "bad value"),
    # -- wrong types ------------------------------------------------------------------------
    ("name-int", "name: 123\nnodes: {count: 1}\n", "`name` must be 1-63"),
    ("name-list", "name: [a]\nnodes: {count: 1}\n", "`name` must be 1-63"),
    ("name-null", "name:\nnodes: {count: 1}\n", "`name` must be 1-63"),
    ("name-date", "name: 2024-01-01\nnodes: {count: 1}\n", "`name` must be 1-63"),
    ("name-huge", "name: " + "a" * 100_000 + "\nnodes: {count: 1}\n", "`name` must be 1-63"),
    ("count-float", "name: demo\nnodes: {count: 1.5}\n", "must be an integer"),
    ("count-bool", "name: demo\nnodes: {count: true}\n", "must be an integer"),
    ("count-huge", "name: demo\nnodes: {count: 99999999999999999999}\n", "nodes.count"),
    ("count-negative", "name: demo\nnodes: {count: -1}\n", "at least 1"),
    ("nodes-string", "name: demo\nnodes: three\n", "`nodes`"),
    ("etcd-list", BASE + "etcd: [a]\n", "`etcd` must be a mapping"),
    ("write-files-map", BASE + "write_files: {path: /etc/x}\n", "`write_files` must be a list"),
    ("write-files-content-int", BASE + "write_files:\n  - {path: /etc/x, content: 5}\n",
     "write_files.0.content"),
    ("ssh-keys-string", BASE + "ssh_authorized_keys: ssh-ed25519 AAAA\n",
     "ssh_authorized_keys"),
    ("metadata-nested", BASE + "fleet:\n  metadata: {a: {b: c}}\n", "fleet.metadata.a"),
    ("port-string", BASE + "etcd:\n  client_port: '2379'\n", "must be an integer"),
    ("units-map", BASE + "units: {file: x}\n", "`units` must be a list"),
    ("units-item-string", BASE + "units: [web.service]\n", "units.0"),
    ("sidekick-port-string", _unit(f"{{name: web@.service, content: {UNIT_OK}, instances: 1, "
                                   "sidekick: {port: http}}"), "sidekick.port"),
    # -- declared units ---------------------------------------------------------------------
    ("unit-name-traversal", _unit(f"{{name: ../../etc/passwd.service, content: {UNIT_OK}}}"),
     "cannot contain '/'"),
    ("unit-name-nul", _unit(f'{{name: "web\\0.service", content: {UNIT_OK}}}'), "NUL byte"),
    ("unit-name-empty", _unit(f"{{name: '', content: {UNIT_OK}}}"), "units"),
    ("unit-name-huge", _unit(f"{{name: {'a' * 5000}.service, content: {UNIT_OK}}}"),
     "systemd allows at most 255"),
    ("unit-name-unicode", _unit(f"{{name: wéb.service, content: {UNIT_OK}}}"),
     "is not allowed"),
    ("unit-name-int", _unit(f"{{name: 5, content: {UNIT_OK}}}"), "units.0.name"),
    ("unit-content-nul", _unit('{name: a.service, content: "[Service]\\nA=\\0\\n"}'), "NUL"),
    ("unit-content-no-section",
     _unit('{name: a.service, content: "ExecStart=/bin/true\\n"}'), "section"),
    ("unit-content-unclosed-section", _unit('{name: a.service, content: "[Service\\n"}'),
     "closing ']'"),
    ("unit-content-bad-key", _unit('{name: a.service, content: "[Service]\\nExec Start=x\\n"}'),
     "Exec Start"),
    ("unit-xfleet-unknown", _unit('{name: a.service, content: "[X-Fleet]\\nMachineIDs=x\\n"}'),
     "MachineID"),
    ("unit-xfleet-global-maybe", _unit('{name: a.service, content: "[X-Fleet]\\nGlobal=maybe\\n"}'),
     "Global=maybe"),
    ("unit-xfleet-bad-conflicts",
     _unit('{name: a.service, content: "[X-Fleet]\\nConflicts=../x\\n"}'), "Conflicts"),
    ("unit-xfleet-metadata-no-equals",
     _unit('{name: a.service, content: "[X-Fleet]\\nMachineMetadata=region\\n"}'),
     "MachineMetadata"),
    ("unit-xfleet-machineof-self",
     _unit('{name: a.service, content: "[X-Fleet]\\nMachineOf=a.service\\n"}'), "MachineOf"),
    ("unit-conflicts-newline",
     _unit(f'{{name: a.service, content: {UNIT_OK}, conflicts: ["a\\nb"]}}'),
     "control character U+000A"),
    ("unit-machine-of-newline",
     _unit(f'{{name: a.service, content: {UNIT_OK}, machine_of: "b.service\\nGlobal=true"}}'),
     "control character U+000A"),
    ("sidekick-key-newline-injection",
     _unit(f'{{name: web@.service, content: {UNIT_OK}, instances: 1, sidekick: '
           '{port: 80, key: "/x\\nExecStartPre=/bin/evil\\n#"}}'), "U+000A"),
    ("sidekick-path-newline",
     _unit(f'{{name: web@.service, content: {UNIT_OK}, instances: 1, sidekick: '
           '{port: 80, check: http, path: "/\\rX=1"}}'), "U+000D"),
    ("unit-file-missing", _unit("{file: nope/web.service}"), "not found"),
    ("unit-file-is-dir", _unit("{file: ., name: a.service}"), "cannot read"),
    ("unit-file-traversal-dir", _unit("{file: ../../../../../../../../etc, name: a.service}"),
     "cannot read"),
    ("instances-bad", _unit(f"{{name: web@.service, content: {UNIT_OK}, instances: ['a/b']}}"),
     "instances"),
    ("instances-huge", _unit(f"{{name: web@.service, content: {UNIT_OK}, "
                             "instances: 100000000}"), "instances"),
]


def _run(capsys, *argv: str) -> Outcome:
    code = main(list(argv))
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


@pytest.fixture(scope="module")
def previous_render(tmp_path_factory):
    """A good render that every bad render into the same directory must leave alone."""
    base = tmp_path_factory.mktemp("prev")
    good = base / "good.yaml"
    good.write_text(BASE.replace("demo", "prev"))
    out = base / "out"
    assert main(["render", str(good), "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("text,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cluster_file(capsys, tmp_path, previous_render, text, fragment):
    path = tmp_path / "cluster.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    before = snapshot(previous_render)

    assert_clear_refusal(_run(capsys, "validate", str(path)), str(path), fragment)
    out = tmp_path / "out"
    assert_clear_refusal(_run(capsys, "render", str(path), "-o", str(out)), str(path), fragment)
    assert not out.exists(), "nothing may be written for a bad definition"
    assert_clear_refusal(_run(capsys, "render", str(path), "-o", str(previous_render)),
                         str(path), fragment)
    assert snapshot(previous_render) == before, "a previous render stays as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]


OTHER_FILES = [
    ("missing", None, "no such file"),
    ("directory", "dir", "is a directory"),
]


@pytest.mark.parametrize("kind,make,fragment", OTHER_FILES, ids=[c[0] for c in OTHER_FILES])
def test_unreadable_cluster_paths(capsys, tmp_path, kind, make, fragment):
    path = tmp_path / "c.yaml"
    if make == "dir":
        path.mkdir()
    assert_clear_refusal(_run(capsys, "validate", str(path)), str(path), fragment)
    out = tmp_path / "out"
    assert_clear_refusal(_run(capsys, "render", str(path), "-o", str(out)), str(path), fragment)
    assert not out.exists()


def test_render_into_a_file_or_foreign_dir_writes_nothing(capsys, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    target = tmp_path / "afile"
    target.write_text("keep")
    assert_clear_refusal(_run(capsys, "render", str(good), "-o", str(target)), str(target))
    assert target.read_text() == "keep"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_clear_refusal(_run(capsys, "render", str(good), "-o", str(foreign)), str(foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging left"
