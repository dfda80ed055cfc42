"""`validate_user_data`: coreos-cloudinit's structure and validity rules, plus our errors."""

from __future__ import annotations

import base64
import gzip
import re
import textwrap
import zlib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from provision.errors import Problem
from provision.userdata import validate_user_data
from provision.userdata.rules import CLOUD_CONFIG, LIST, MAPPING, WRITE_FILE, Field
from provision.userdata.write_files import (
    UndecodableContent,
    decode_content,
    on_read_only_usr,
)

FILE = "user-data-1"

SEED = """\
#cloud-config

ssh_authorized_keys:
  - ssh-rsa AAAA...
coreos:
  etcd2:
    discovery: https://discovery.etcd.io/ea524a83ed3f84e550417f0fb89e91c8
    advertise-client-urls: http://$private_ipv4:2379,http://$private_ipv4:4001
    initial-advertise-peer-urls: http://$private_ipv4:2380
    listen-client-urls: http://0.0.0.0:2379,http://0.0.0.0:4001
    listen-peer-urls: http://$private_ipv4:2380
  fleet:
    public-ip: $private_ipv4
    metadata: region=us-west,disk=ssd
  flannel:
    interface: $public_ipv4
  units:
    - name: etcd2.service
      command: start
    - name: flanneld.service
      drop-ins:
        - name: 50-network-config.conf
          content: |
            [Service]
            ExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config '{ "Network": "10.1.0.0/16" }'
      command: start
write_files:
  - path: "/etc/resolv.conf"
    permissions: "0644"
    owner: "root"
    content: |
      nameserver 172.17.8.111
"""  # noqa: E501 - the seed's drop-in line is kept verbatim

SEED_PROXY = """\
#cloud-config
hostname: core-04
coreos:
  etcd2:
    proxy: "on"
    discovery: https://discovery.etcd.io/ea524a83ed3f84e550417f0fb89e91c8
    listen-client-urls: http://0.0.0.0:2379
    initial-cluster-state: existing
  fleet:
    etcd_servers: http://127.0.0.1:2379
    metadata: role=proxy
  update:
    reboot-strategy: "off"
  units:
    - name: etcd2.service
      command: start
    - name: fleet.service
      command: start
    - name: docker-tcp.socket
      enable: true
      content: |
        [Socket]
        ListenStream=2375
"""

SEED_FULL = """\
#cloud-config
manage_etc_hosts: localhost
users:
  - name: core
    groups: [sudo, docker]
    ssh-authorized-keys: ["ssh-ed25519 AAAA..."]
    no-user-group: false
coreos:
  locksmith:
    window_start: Thu 04:00
    window_length: 1h
  oem:
    id: vagrant
  etcd2:
    heartbeat-interval: 100
    election-timeout: 1000
    client-cert-auth: false
    name: core-01
  units:
    - name: docker.service
      drop_ins:
        - name: 10-opts.conf
          content: "[Service]\\n"
write_files:
  - path: /opt/bin/setup
    permissions: "0755"
    encoding: gzip+base64
    content: H4sIAAAAAAACA1NW1E/KzNMvzuBKTc7IV8jI5AIALzra6RIAAAA=
  - path: /etc/motd
    content: hello
    permissions: "644"
    owner: 0
"""


def doc(text: str) -> str:
    """A cloud-config body under the header; the body starts on line 2."""
    return "#cloud-config\n" + textwrap.dedent(text)


# (document, [(line, severity, message substring), ...] in the order reported)
CASES = [
    pytest.param(doc(""), [], id="empty-document"),
    pytest.param("#cloud-config", [], id="header-only-no-newline"),
    pytest.param("#cloud-config\r\nhostname: a\r\n", [], id="crlf-header"),
    pytest.param(doc("# just a comment\n"), [], id="comment-only"),
    pytest.param("hostname: a\n", [(1, "error", 'must be "#cloud-config" or begin with "#!"')],
                 id="no-header"),
    pytest.param("", [(1, "error", "the file is empty")], id="empty-file"),
    pytest.param("# cloud-config\nhostname: a\n",
                 [(1, "error", 'the first line is "# cloud-config"')], id="misspelt-header"),
    pytest.param("#!/bin/bash\necho hi\n", [(1, "error", "run it as a script")],
                 id="shell-script"),
    pytest.param("\ufeff#cloud-config\n", [(1, "error", "byte-order mark")], id="bom"),
    pytest.param("#cloud-config \t\nhostname: a\n", [], id="header-trailing-space"),
    pytest.param('{"ignition": {"version": "2.0.0"}}', [(1, "error", "an Ignition config")],
                 id="ignition-config"),
    pytest.param("hostname: a\nbogus: 1\n",
                 [(1, "error", "#cloud-config"), (2, "warning", 'unrecognized key "bogus"')],
                 id="no-header-still-checks-body"),
    pytest.param(doc("coreos: [\n"), [(3, "error", "malformed YAML")], id="malformed-yaml"),
    pytest.param(doc("hostname: a\nhostname: b\n"), [(3, "error", "duplicate key")],
                 id="duplicate-key"),
    pytest.param(doc("- a\n- b\n"), [(2, "error", "top level must be a mapping")],
                 id="top-level-list"),
    pytest.param(doc("just text\n"), [(2, "error", "top level must be a mapping")],
                 id="top-level-scalar"),
    pytest.param(doc("hostnme: a\n"),
                 [(2, "warning", 'unrecognized key "hostnme" (did you mean "hostname"?)')],
                 id="unknown-top-level-key"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            listen-client-url: http://0.0.0.0:2379
        """),
                 [(4, "warning",
                   'unrecognized key "listen-client-url" (did you mean "listen-client-urls"?)')],
                 id="unknown-key-suggested-in-dash-style"),
    pytest.param(doc("""\
        coreos:
          fleet:
            public-ip: 10.0.0.1
            public_ip: 10.0.0.2
        """), [(5, "error", "duplicate key \"public_ip\"")], id="dash-underscore-duplicate"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            proxy: maybe
        """), [(4, "error", 'invalid value maybe for "proxy"')], id="proxy-invalid"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            proxy: on
        """), [], id="proxy-unquoted-on-is-the-string-on"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            proxy: true
        """), [(4, "error", 'invalid value true for "proxy"')], id="proxy-true"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            proxy: readonly
            initial-cluster-state: new
        """), [], id="proxy-readonly"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            initial_cluster_state: old
        """), [(4, "warning", "want one of: new, existing")], id="cluster-state-invalid"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            heartbeat_interval: "100"
            debug: "true"
            election_timeout: 1.5
        """), [(4, "warning", 'incorrect type for "heartbeat_interval" (want int)'),
               (5, "warning", 'incorrect type for "debug" (want bool)'),
               (6, "warning", 'incorrect type for "election_timeout" (want int)')],
                 id="etcd2-int-and-bool-types"),
    pytest.param(doc("""\
        coreos:
          etcd2:
            name: 42
            discovery: true
            peer-ca-file: /etc/ca.pem
        """), [(6, "warning", 'deprecated key "peer-ca-file"')],
                 id="string-accepts-int-and-bool"),
    pytest.param(doc("""\
        coreos:
          etcd:
            addr: 10.0.0.1:4001
        """), [(3, "warning", '"etcd" configures etcd v0.4')], id="etcd-v04"),
    pytest.param(doc("""\
        coreos:
          fleet:
            verbosity: 2
            disable-engine: yes
            verify_units: 1
        """), [(6, "warning", 'incorrect type for "verify_units" (want bool)')],
                 id="fleet-types"),
    pytest.param(doc("""\
        coreos:
          update:
            reboot-strategy: off
        """), [], id="reboot-strategy-unquoted-off-is-the-string-off"),
    pytest.param(doc("""\
        coreos:
          update:
            reboot-strategy: sometimes
            group: alpha
        """), [(4, "error", "want one of: best-effort, etcd-lock, reboot, off")],
                 id="reboot-strategy-invalid"),
    pytest.param(doc("""\
        coreos:
          flannel:
            etcd_endpoints: http://a:2379
            ip-masq: true
          locksmith:
            group: g
            window-start: Sun 1:00
          oem:
            bug-report-url: http://x
            vendor: acme
        """), [(11, "warning", 'unrecognized key "vendor"')], id="flannel-locksmith-oem"),
    pytest.param(doc("coreos: []\n"),
                 [(2, "warning", 'incorrect type for "coreos" (want mapping)')],
                 id="coreos-not-mapping"),
    pytest.param(doc("coreos:\n"), [(2, "warning", "the value is empty")], id="coreos-empty"),
    pytest.param(doc("""\
        coreos:
          units:
            - command: start
        """), [(4, "error", 'missing required key "name"')], id="unit-without-name"),
    pytest.param(doc("""\
        coreos:
          units:
            - name:
        """), [(4, "error", '"name" must not be empty')], id="unit-empty-name"),
    pytest.param(doc("""\
        coreos:
          units:
            - name: a.service
              command: begin
              mask: "no"
              runtime: true
              enabled: true
        """), [(5, "error", 'invalid value begin for "command"'),
               (6, "warning", 'incorrect type for "mask" (want bool)'),
               (8, "warning", 'unrecognized key "enabled" (did you mean "enable"?)')],
                 id="unit-bad-fields"),
    pytest.param(doc("""\
        coreos:
          units:
            - name: a.service
              drop-ins:
                - content: x
                - name: b.conf
                  contents: y
        """), [(6, "error", 'missing required key "name"'),
               (8, "warning", 'unrecognized key "contents"')], id="drop-in-problems"),
    pytest.param(doc("""\
        coreos:
          units:
            name: a.service
        """), [(3, "warning", 'incorrect type for "units" (want list of mappings)')],
                 id="units-not-list"),
    pytest.param(doc("""\
        write_files:
          - path: /usr/share/oem/x
        """), [(3, "error", "read-only filesystem")], id="write-under-usr"),
    pytest.param(doc("""\
        write_files:
          - path: /usr
          - path: /etc/../usr/lib/x
          - path: /usrlocal/x
        """), [(4, "error", "read-only filesystem"), (5, "error", "read-only filesystem")],
                 id="write-usr-prefix-of-the-cleaned-directory"),
    pytest.param(doc("""\
        write_files:
          - path: etc/motd
        """), [(3, "warning", "is relative")], id="write-relative"),
    pytest.param(doc("""\
        write_files:
          - content: x
        """), [(3, "error", 'missing required key "path"')], id="write-without-path"),
    pytest.param(doc("""\
        write_files:
          - path: /etc/a
            permissions: 0644
        """), [], id="permissions-unquoted-octal-is-the-text-0644"),
    pytest.param(doc("""\
        write_files:
          - path: /etc/a
            permissions: 644
        """), [], id="permissions-unquoted-644"),
    pytest.param(doc("""\
        write_files:
          - path: /etc/a
            permissions: "0999"
            encoding: base32
            owner: core:core
        """), [(4, "error", 'invalid value 0999 for "permissions"'),
               (5, "error", 'content cannot be decoded as "base32"'),
               (5, "error", 'invalid value base32 for "encoding"')],
                 id="permissions-and-encoding-invalid"),
    pytest.param(doc("""\
        write_files:
          path: /etc/a
        """), [(2, "warning", 'incorrect type for "write_files" (want list of mappings)')],
                 id="write-files-not-list"),
    pytest.param(doc("""\
        ssh_authorized_keys:
          - ssh-rsa A
          - [nested]
        """), [(4, "warning", 'incorrect type for "ssh_authorized_keys[1]" (want string)')],
                 id="ssh-key-list-item"),
    pytest.param(doc("ssh_authorized_keys: ssh-rsa A\n"),
                 [(2, "warning", "want list of strings")], id="ssh-keys-not-list"),
    pytest.param(doc("hostname: {a: 1}\n"), [(2, "warning", 'incorrect type for "hostname"')],
                 id="hostname-mapping"),
    pytest.param(doc("manage_etc_hosts: yes-please\n"),
                 [(2, "warning", 'want "localhost"')], id="manage-etc-hosts"),
    pytest.param(doc("""\
        users:
          - name: core
            groups: docker
            no_create_home: "yes"
            coreos-ssh-import-github: someone
            shel: /bin/sh
        """), [(4, "warning", 'incorrect type for "groups" (want list of strings)'),
               (5, "warning", "remove the quotes"),
               (6, "warning", 'deprecated key "coreos-ssh-import-github"'),
               (7, "warning", 'unrecognized key "shel" (did you mean "shell"?)')],
                 id="user-problems"),
    pytest.param(doc("""\
        base: &base
          name: a.service
        coreos:
          units:
            - <<: *base
              command: start
        """), [(2, "warning", 'unrecognized key "base"')], id="anchor-and-merge"),
    pytest.param(doc("hostname: \x07\n"), [(2, "error", "not allowed")], id="control-character"),
    pytest.param(doc("hostname: a\ud800\n"), [(2, "error", "lone surrogate")], id="surrogate"),
]


def summary(problems: list[Problem]) -> list[tuple]:
    return [(p.line, p.severity, p.message) for p in problems]


@pytest.mark.parametrize("text, expected", CASES)
def test_validate_table(text, expected):
    problems = validate_user_data(text, FILE)
    assert len(problems) == len(expected), summary(problems)
    for problem, (line, severity, fragment) in zip(problems, expected, strict=True):
        assert (problem.line, problem.severity) == (line, severity), summary(problems)
        assert fragment in problem.message, summary(problems)
        assert problem.file == FILE
        assert problem.col is not None


@pytest.mark.parametrize("text", [SEED, SEED_PROXY, SEED_FULL],
                         ids=["seed-member", "seed-proxy", "seed-full"])
def test_seed_cloud_configs_are_clean(text):
    assert validate_user_data(text, FILE) == []


def test_positions_point_at_key_or_value():
    text = doc("""\
        coreos:
          etcd2:
            proxy: maybe
            bogus: 1
        """)
    problems = validate_user_data(text, FILE)
    assert [(p.line, p.col) for p in problems] == [(4, 12), (5, 5)]
    assert str(problems[0]) == f'{FILE}:4:12: invalid value maybe for "proxy" ' \
                               "(want one of: on, off, readonly)"


def test_problems_sorted_by_line():
    text = "hostname: a\nzzz: 1\ncoreos:\n  units:\n    - command: begin\n"
    problems = validate_user_data(text, FILE)
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    assert len(problems) == 4


def test_users_spelling_is_kept():
    problems = validate_user_data(doc("coreos:\n  etcd2:\n    heartbeat-interval: x\n"), FILE)
    assert summary(problems) == [
        (4, "warning", 'incorrect type for "heartbeat-interval" (want int): got a string')]


def test_rules_are_well_formed():
    def walk(rule: Field, where: str) -> None:
        if rule.kind == MAPPING:
            assert rule.keys, where
            for name, child in rule.keys.items():
                assert "-" not in name, f"{where}.{name} must use the canonical `_` spelling"
                walk(child, f"{where}.{name}")
            assert set(rule.required) <= set(rule.keys), where
        elif rule.kind == LIST:
            assert rule.item is not None, where
            walk(rule.item, f"{where}[]")

    walk(CLOUD_CONFIG, "cloud-config")


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                         st.floats(allow_nan=False), st.sampled_from(
                             ["on", "off", "0644", "/usr/x", "start", "etcd2", "name"]))
keys = st.one_of(st.sampled_from(["coreos", "etcd2", "etcd", "fleet", "units", "name",
                                  "write_files", "path", "permissions", "drop-ins", "proxy",
                                  "users", "groups", "ssh_authorized_keys", "command",
                                  "public-ip", "public_ip", "mask", "content"]),
                 st.text(max_size=10))
yaml_data = st.recursive(yaml_scalars,
                         lambda children: st.one_of(st.lists(children, max_size=4),
                                                    st.dictionaries(keys, children, max_size=5)),
                         max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text):
    for candidate in (text, "#cloud-config\n" + text):
        problems = validate_user_data(candidate, FILE)
        assert all(isinstance(p, Problem) for p in problems)
        assert [p.line or 0 for p in problems] == sorted(p.line or 0 for p in problems)


@settings(max_examples=300, deadline=None)
@given(yaml_data)
def test_arbitrary_yaml_never_raises(data):
    text = "#cloud-config\n" + yaml.safe_dump(data, allow_unicode=True)
    problems = validate_user_data(text, FILE)
    assert all(p.line is not None and p.col is not None for p in problems)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["coreos", "write_files", "users", "hostname"]),
                       yaml_data, max_size=4))
def test_arbitrary_known_sections_never_raise(data):
    text = "#cloud-config\n" + yaml.safe_dump(data, allow_unicode=True)
    assert all(p.file == FILE for p in validate_user_data(text, FILE))


# Values that match each `valid` (or `advice`) pattern in the rules (checked to cover them all).
VALID_SAMPLES = {
    r"^(new|existing)$": ["new", "existing"],
    r"^(on|off|readonly)$": ["on", "off", "readonly"],
    r"^(best-effort|etcd-lock|reboot|off)$": ["best-effort", "etcd-lock", "reboot", "off"],
    r"^(start|stop|restart|reload|try-restart|reload-or-restart|reload-or-try-restart)$":
        ["start", "stop", "reload-or-try-restart"],
    r"^(base64|b64|gz|gzip|gz\+base64|gzip\+base64|gz\+b64|gzip\+b64)$": ["b64", "gzip+base64"],
    r"^0?[0-7]{3,4}$": ["0644", "755", "01777"],
    r"^localhost$": ["localhost"],
    r"^((?i:sun|mon|tue|wed|thu|fri|sat|sun) )?0*([0-9]|1[0-9]|2[0-3]):0*([0-9]|[1-5][0-9])$":
        ["04:00", "Thu 04:00", "sun 23:59", "7:5", "SAT 00:00"],
    r"^[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+$": ["1h", "30m", "1h30m", "1.5h", "-2s"],
}


def encoded(data: bytes, encoding: str) -> str:
    if encoding in ("b64", "base64"):
        return base64.b64encode(data).decode()
    return base64.b64encode(gzip.compress(data, mtime=0)).decode()


def file_contents() -> st.SearchStrategy:
    """`encoding` and `content` of a write_files entry that decode, or plain content."""
    plain = st.fixed_dictionaries({}, optional={"content": st.text(max_size=30)})
    packed = st.tuples(st.sampled_from(["b64", "base64", "gzip+base64", "gz+b64"]),
                       st.binary(max_size=40)).map(
        lambda pair: {"encoding": pair[0], "content": encoded(pair[1], pair[0])})
    return st.one_of(plain, packed)


def valid_values(rule: Field, spell_dashed: bool) -> st.SearchStrategy:
    """Documents (or parts) that follow the rules, so must validate with no problems."""
    if rule.kind == MAPPING:
        usable = {name: child for name, child in rule.keys.items()
                  if not child.deprecated and not child.hint}
        paired = {"encoding", "content"} <= set(usable)

        def spelled(name: str) -> str:
            return name.replace("_", "-") if spell_dashed else name

        fields = st.fixed_dictionaries(
            {spelled(name): valid_values(usable[name], spell_dashed) for name in rule.required},
            optional={spelled(name): valid_values(child, spell_dashed)
                      for name, child in usable.items()
                      if name not in rule.required and not (paired and name in
                                                            ("encoding", "content"))})
        if paired:
            return st.tuples(fields, file_contents()).map(lambda p: {**p[0], **p[1]})
        return fields
    if rule.kind == LIST:
        assert rule.item is not None
        return st.lists(valid_values(rule.item, spell_dashed), max_size=3)
    if rule.kind == "int":
        return st.integers(min_value=-(2**31), max_value=2**31)
    if rule.kind == "float":
        return st.one_of(st.integers(min_value=-(2**31), max_value=2**31),
                         st.floats(allow_nan=False, allow_infinity=False))
    if rule.kind == "bool":
        return st.booleans()
    if rule is WRITE_FILE.keys["path"]:
        return st.sampled_from(["/etc/", "/opt/bin/", "/var/lib/"]).flatmap(
            lambda d: st.text(alphabet="abc-._1", min_size=1, max_size=8).map(d.__add__))
    if rule.valid or rule.advice:
        return st.sampled_from(VALID_SAMPLES[rule.valid or rule.advice])
    # Go's YAML reads integers past int64 as uint64, which no field takes.
    return st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1), st.booleans())


def test_valid_samples_cover_every_pattern():
    found = set()

    def walk(rule: Field) -> None:
        found.update(p for p in (rule.valid, rule.advice) if p)
        for child in rule.keys.values():
            walk(child)
        if rule.item is not None:
            walk(rule.item)

    walk(CLOUD_CONFIG)
    assert found == set(VALID_SAMPLES)
    for pattern, samples in VALID_SAMPLES.items():
        for sample in samples:
            assert re.search(pattern, sample), (pattern, sample)


@settings(max_examples=200, deadline=None)
@given(st.booleans().flatmap(lambda dashed: valid_values(CLOUD_CONFIG, dashed)))
def test_documents_following_the_rules_are_clean(data):
    text = "#cloud-config\n" + yaml.safe_dump(data, allow_unicode=True)
    assert validate_user_data(text, FILE) == []


def _gzip(data: bytes, flags: int = 0, extra: bytes = b"") -> bytes:
    body = gzip.compress(data, mtime=0)
    return body[:3] + bytes([flags]) + body[4:10] + extra + body[10:]


def _with_header_crc(data: bytes) -> bytes:
    header = bytearray(gzip.compress(data, mtime=0)[:10])
    header[3] = 0x02
    crc = zlib.crc32(bytes(header)) & 0xFFFF
    return bytes(header) + crc.to_bytes(2, "little") + gzip.compress(data, mtime=0)[10:]


# (content, encoding, decodes to, or the reason it does not) - Go's base64 and gzip readers
DECODING = [
    pytest.param(b"hi", "", b"hi", id="no-encoding"),
    pytest.param(b"aGk=", "base64", b"hi", id="base64"),
    pytest.param(b"aGk=", "b64", b"hi", id="b64"),
    pytest.param(b"aG\r\nk=\n", "base64", b"hi", id="base64-line-breaks-skipped"),
    pytest.param(b"aGk", "base64", "padding", id="base64-padding-required"),
    pytest.param(b"aG k=", "base64", "' ' at character 3", id="base64-space"),
    pytest.param("aGk=é".encode(), "base64", "non-ASCII", id="base64-non-ascii"),
    pytest.param(b"aGk=aGk=", "base64", "padding", id="base64-data-after-padding"),
    pytest.param(b"", "base64", b"", id="base64-empty"),
    pytest.param(gzip.compress(b"hi", mtime=0), "gzip", b"hi", id="gzip"),
    pytest.param(base64.b64encode(gzip.compress(b"hi", mtime=0)), "gzip+b64", b"hi",
                 id="gzip+b64"),
    pytest.param(b"", "gz", "shorter than a gzip header", id="gzip-empty"),
    pytest.param(b"hello world, not gzip", "gz", "no gzip header", id="gzip-magic"),
    pytest.param(_gzip(b"hi", 0x08, b"name\x00"), "gzip", b"hi", id="gzip-file-name"),
    pytest.param(_gzip(b"hi", 0x04, b"\x02\x00ab"), "gzip", b"hi", id="gzip-extra-field"),
    pytest.param(_gzip(b"hi", 0x08)[:12], "gzip", "truncated", id="gzip-name-unterminated"),
    pytest.param(_with_header_crc(b"hi"), "gzip", b"hi", id="gzip-header-crc"),
    pytest.param(_with_header_crc(b"hi")[:10] + b"\x00\x00" + _with_header_crc(b"hi")[12:],
                 "gzip", "checksum", id="gzip-header-crc-wrong"),
    pytest.param(b"x", "base32", "knows no such encoding", id="unknown-encoding"),
]


@pytest.mark.parametrize("content, encoding, expected", DECODING)
def test_decode_content_like_go(content, encoding, expected):
    if isinstance(expected, bytes):
        assert decode_content(content, encoding) == expected
    else:
        with pytest.raises(UndecodableContent, match=re.escape(expected)
                           if expected != "knows no such encoding" else "not an encoding"):
            decode_content(content, encoding)


@pytest.mark.parametrize("path, refused", [
    ("/usr/bin/x", True), ("/usr/", True), ("/usrlocal/x", True), ("/tmp/../usr/x", True),
    ("//usr/x", True), ("/usr", False), ("/usr2", False), ("/tmp/usr/x", False),
    ("usr/x", False), ("/etc/x", False),
])
def test_read_only_usr_is_a_prefix_match_on_the_directory(path, refused):
    assert on_read_only_usr(path) is refused


def test_go_resolves_plain_scalars_its_own_way():
    text = doc("""\
        coreos:
          units:
            - name: a.service
              enable: y
              mask: N
              runtime: 'yes'
          fleet:
            verbosity: 0x10
            token_limit: 1_000
            engine_reconcile_interval: 1e3
            etcd_request_timeout: .5
          etcd2:
            heartbeat_interval: 99999999999999999999
            election_timeout: 1:20
            wal_dir: 15344916977845848064
            data_dir: 9223372036854775807
        """)
    assert summary(validate_user_data(text, FILE)) == [
        (7, "warning", 'incorrect type for "runtime" (want bool): got a string "yes"; '
                       "remove the quotes"),
        (14, "warning", 'incorrect type for "heartbeat_interval" (want int): got a number'),
        (15, "warning", 'incorrect type for "election_timeout" (want int): got a string'),
        (16, "warning", 'incorrect type for "wal_dir" (want string): got an integer too large '
                        "for it"),
    ]
