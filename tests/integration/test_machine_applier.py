"""`provision cloudinit` on a REAL machine: the project's image booted with systemd as
PID 1 (systemd-nspawn), the applier run in it as root, as the boot unit runs it.

One machine for the module, tests in order: every section lands; the same file again
changes nothing (no job, no reload, no restart, no file rewritten); a changed drop-in
restarts only its unit; a bad file applies nothing; non-root is refused.
Skipped, with the reason, without root, systemd-nspawn or mmdebstrap.
"""

from __future__ import annotations

import base64
import gzip

import pytest

from tests.support.etcd import wait_for
from tests.support.machine import PROVISION, booted, machine_image, machine_problem  # noqa: F401

pytestmark = pytest.mark.skipif(machine_problem() is not None,
                                reason=str(machine_problem()))

IP = "172.17.8.101"
CORE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIApplierTestCoreKey000000000000000000000 core@t"
ALICE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIApplierTestAliceKey00000000000000000000 a@t"
SECRET = base64.b64encode(b"s3cret\n").decode()
ZIPPED = base64.b64encode(gzip.compress(b"#!/bin/sh\necho zipped\n")).decode()

USER_DATA = f"""\
#cloud-config
hostname: applied-1
manage_etc_hosts: localhost
ssh_authorized_keys:
  - "{CORE_KEY}"
users:
  - name: alice
    gecos: Alice Applier
    groups: [sudo]
    shell: /bin/sh
    ssh_authorized_keys: ["{ALICE_KEY}"]
write_files:
  - path: /etc/applier/plain.conf
    content: |
      address=$private_ipv4 literal=\\$private_ipv4
  - path: /etc/applier/secret
    permissions: "0640"
    owner: alice:alice
    encoding: b64
    content: {SECRET}
  - path: /opt/applier/zipped.sh
    permissions: "0755"
    encoding: gzip+base64
    content: {ZIPPED}
coreos:
  units:
    - name: applier-web.service
      command: start
      enable: true
      content: |
        [Unit]
        Description=applier test web
        [Service]
        ExecStart=/bin/sleep infinity
        [Install]
        WantedBy=multi-user.target
      drop-ins:
        - name: 10-colour.conf
          content: |
            [Service]
            Environment=COLOUR=blue
    - name: applier-runtime.service
      runtime: true
      command: start
      content: |
        [Service]
        ExecStart=/bin/sleep infinity
    - name: applier-once.service
      command: restart
      content: |
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/bin/true
    - name: applier-masked.service
      mask: true
"""
WRITTEN = ["/etc/hostname", "/etc/hosts", "/etc/applier/plain.conf", "/etc/applier/secret",
           "/opt/applier/zipped.sh", "/home/core/.ssh/authorized_keys", "/etc/sudoers.d/core",
           "/home/alice/.ssh/authorized_keys", "/etc/systemd/system/applier-web.service",
           "/etc/systemd/system/applier-web.service.d/10-colour.conf",
           "/run/systemd/system/applier-runtime.service",
           "/etc/systemd/system/applier-once.service"]
RUNNING = ("applier-web.service", "applier-runtime.service")


@pytest.fixture(scope="module")
def machine(machine_image):  # noqa: F811 - the fixture imported above
    with booted(machine_image) as made:
        made.run("ip", "address", "add", f"{IP}/32", "dev", "lo")
        made.write("/root/user-data", USER_DATA)
        first = made.apply("/root/user-data", "--private-ipv4", IP)
        assert first.returncode == 0, first.stderr + first.stdout
        made.first = first
        yield made


def snapshot(machine) -> dict:  # Machine
    return {"jobs": machine.jobs(), "reloads": machine.reloads(),
            "pids": {u: machine.unit(u, "MainPID") for u in RUNNING},
            "once": machine.unit("applier-once.service", "ActiveEnterTimestampMonotonic"),
            "mtimes": machine.mtimes(WRITTEN)}


def test_every_section_lands(machine):
    assert "applier-web.service: start (not running)" in machine.first.stdout
    assert machine.first.stdout.count("systemd: daemon reloaded") == 1
    # hostname, /etc/hosts
    assert machine.out("hostname") == "applied-1"
    assert machine.out("cat", "/etc/hostname") == "applied-1"
    assert "127.0.0.1\tapplied-1" in machine.out("cat", "/etc/hosts")
    # users, keys, sudo
    assert machine.out("getent", "passwd", "alice").endswith(":Alice Applier:/home/alice:/bin/sh")
    assert "sudo" in machine.out("id", "-nG", "alice").split()
    assert CORE_KEY in machine.out("cat", "/home/core/.ssh/authorized_keys")
    assert machine.stat("/home/core/.ssh") == "700 core:core"
    assert machine.stat("/home/core/.ssh/authorized_keys") == "600 core:core"
    assert ALICE_KEY in machine.out("cat", "/home/alice/.ssh/authorized_keys")
    assert machine.out("runuser", "-u", "core", "--", "sudo", "-n", "id", "-u") == "0"
    # write_files: substitution (an escaped variable stays), encodings, modes, owners
    assert machine.out("cat", "/etc/applier/plain.conf") == \
        f"address={IP} literal=$private_ipv4"
    assert machine.stat("/etc/applier/plain.conf") == "644 root:root"
    assert machine.out("cat", "/etc/applier/secret") == "s3cret"
    assert machine.stat("/etc/applier/secret") == "640 alice:alice"
    assert machine.out("/opt/applier/zipped.sh") == "zipped"
    assert machine.stat("/opt/applier/zipped.sh") == "755 root:root"
    # units: started, enabled, runtime, masked, drop-ins
    for unit in (*RUNNING, "applier-once.service"):
        assert machine.out("systemctl", "is-active", unit) == "active", unit
    assert machine.out("systemctl", "is-enabled", "applier-web.service") == "enabled"
    assert machine.run("systemctl", "is-enabled", "applier-masked.service",
                       check=False).stdout.strip() == "masked"
    assert machine.unit("applier-web.service", "Environment") == "COLOUR=blue"
    assert machine.unit("applier-web.service", "DropInPaths") == \
        "/etc/systemd/system/applier-web.service.d/10-colour.conf"
    assert machine.unit("applier-runtime.service", "FragmentPath") == \
        "/run/systemd/system/applier-runtime.service"


def test_the_same_file_again_changes_nothing(machine):
    before = snapshot(machine)
    again = machine.apply("/root/user-data", "--private-ipv4", IP)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "/root/user-data: nothing to change"
    assert snapshot(machine) == before


def test_a_changed_drop_in_restarts_only_its_unit(machine):
    before = snapshot(machine)
    machine.write("/root/user-data", USER_DATA.replace("COLOUR=blue", "COLOUR=green"))
    dry = machine.apply("/root/user-data", "--private-ipv4", IP, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == \
        "would: applier-web.service: restart (its files changed)"
    assert snapshot(machine) == before
    changed = machine.apply("/root/user-data", "--private-ipv4", IP)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines() == [
        "/etc/systemd/system/applier-web.service.d/10-colour.conf: updated (0644 root)",
        "applier-web.service: enabled",
        "systemd: daemon reloaded",
        "applier-web.service: restart (its files changed)",
        "/root/user-data: applied 4 changes"]
    wait_for(lambda: machine.unit("applier-web.service", "MainPID") not in
             ("0", before["pids"]["applier-web.service"]), 30, message="web restarted")
    after = snapshot(machine)
    assert machine.unit("applier-web.service", "Environment") == "COLOUR=green"
    assert after["pids"]["applier-runtime.service"] == before["pids"]["applier-runtime.service"]
    assert after["once"] == before["once"]
    assert after["reloads"] == before["reloads"] + 1
    assert after["jobs"] == before["jobs"] + 1  # the one restart
    moved = {p for p in WRITTEN if after["mtimes"][p] != before["mtimes"][p]}
    assert moved == {"/etc/systemd/system/applier-web.service.d/10-colour.conf"}


@pytest.mark.parametrize("bad, where, message", [
    pytest.param("    - {name: applier-new.service, command: launch}\n", (0, 44),
                 'invalid value launch for "command"', id="unknown-command"),
    pytest.param("    - name: applier-new.service\n      drop-ins: [{name: x.txt}]\n", (1, 25),
                 'drop-in name "x.txt" must be a file name ending in', id="bad-drop-in"),
])
def test_a_bad_file_applies_nothing(machine, bad, where, message):
    text = USER_DATA.replace("hostname: applied-1", "hostname: renamed-2").replace(
        "write_files:\n", "write_files:\n  - {path: /etc/applier/new, content: new}\n") + bad
    line = text.count("\n") - bad.count("\n") + 1 + where[0]
    message = f"bad-user-data:{line}:{where[1]}: {message}"
    machine.write("/root/bad-user-data", text)
    before = snapshot(machine)
    refused = machine.run("sh", "-c", f"cd /root && {PROVISION} cloudinit --from-file "
                          f"bad-user-data --private-ipv4 {IP}", check=False)
    assert refused.returncode == 2
    assert refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert snapshot(machine) == before
    assert machine.out("hostname") == "applied-1"
    assert machine.run("test", "-e", "/etc/applier/new", check=False).returncode == 1
    assert machine.unit("applier-new.service", "LoadState") == "not-found"


def test_an_owner_the_machine_lacks_applies_nothing(machine):
    text = USER_DATA.replace("owner: alice:alice", "owner: nobody-here")
    machine.write("/root/owner-user-data", text.replace("COLOUR=blue", "COLOUR=red"))
    before = snapshot(machine)
    refused = machine.apply("/root/owner-user-data", "--private-ipv4", IP)
    assert refused.returncode == 2
    assert 'write_files[1]: owner "nobody-here" does not exist on this machine' in \
        refused.stderr
    assert snapshot(machine) == before


def test_not_root_is_refused_in_one_line_but_may_validate(machine):
    machine.write("/tmp/user-data", USER_DATA, mode=0o644)
    as_nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PROVISION,
                 "cloudinit", "--from-file", "/tmp/user-data")
    refused = machine.run(*as_nobody, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "provision cloudinit: must run as root (you are uid 65534): it writes system files, "
        "adds users and drives systemd; --validate only checks the file"]
    checked = machine.run(*as_nobody, "--validate", check=False)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == ("/tmp/user-data: valid cloud-config; 4 files, 2 users, "
                                      "4 units")


def test_a_users_symlink_never_redirects_roots_writes(machine):
    """A local user who points their ~/.ssh at /etc gets no root write, chown or chmod
    through it."""
    machine.run("useradd", "--create-home", "mallory")
    machine.run("ln", "-s", "/etc", "/home/mallory/.ssh")
    machine.run("chown", "--no-dereference", "mallory:mallory", "/home/mallory/.ssh")
    machine.write("/root/mallory-user-data", "#cloud-config\nusers:\n  - name: mallory\n"
                  f"    ssh_authorized_keys: [\"{ALICE_KEY}\"]\n")
    etc = machine.stat("/etc", "%a %U:%G")
    uid = machine.out("id", "-u", "mallory")
    refused = machine.apply("/root/mallory-user-data")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        'provision: could not apply "/home/mallory/.ssh/: created (0700)": /home/mallory/.ssh '
        f"is a symlink owned by uid {uid}; refusing to follow it (remove it and apply again)"]
    assert machine.stat("/etc", "%a %U:%G") == etc == "755 root:root"
    assert machine.run("test", "-e", "/etc/authorized_keys", check=False).returncode == 1


def test_image_build_answers_from_the_cache(machine_image, run_cli):  # noqa: F811
    built = run_cli("image", "build")
    assert built.code == 0, built.err
    assert built.out.startswith(f"image {machine_image.key}: {machine_image.rootfs} (cached")
    listed = run_cli("image", "list")
    assert machine_image.key in listed.out and "base-" in listed.out
