"""A fake `vagrant` executable, for testing the Vagrant driver without Vagrant or VMs.

`install(directory)` writes `directory/bin/vagrant` (a shim running `main` below with the
current interpreter) and returns a `FakeVagrant`; put its `bin_dir` first on PATH. Every
run appends one JSON line to `calls.jsonl`: argv, cwd and the VAGRANT_* / PROVISION_*
environment. Like the real Vagrantfile, the fake learns its machines from the manifest
named by $PROVISION_MANIFEST, keeps their states in `machines.json` and answers as
Vagrant 2.3 does:

- `status --machine-readable [NAME…]`: provider-name / state / … lines per machine;
- `up [NAME…]` → running; `destroy [NAME…] --force` → not_created (without `--force`
  it fails as Vagrant does when it cannot ask for confirmation);
- `provision NAME` of a running machine: its user-data, as the manifest names it now,
  is "uploaded": appended to `provisioned.jsonl` with whether the payload is there (a
  machine not running: Vagrant's message, exit 0, as the libvirt and lxc providers do);
- `ssh NAME --command CMD` of a running machine: recorded in `ssh.jsonl`, exit 0 (not
  running: Vagrant's vm_not_running error);
- an unknown machine name → Vagrant's MachineNotFound error.

`fail(command, machine, stderr=…)` scripts a failure: that run prints the text on
stderr and exits non-zero, changing nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROVIDER = "libvirt"
NOT_CREATED = "not_created"
RUNNING = "running"

_SHIM = """#!{python}
import sys
sys.path.insert(0, {repo!r})
from tests.support.fake_vagrant import main
sys.exit(main({state!r}))
"""


@dataclass
class FakeVagrant:
    bin_dir: Path
    state_dir: Path

    @property
    def executable(self) -> Path:
        return self.bin_dir / "vagrant"

    def calls(self) -> list[dict]:
        log = self.state_dir / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def provisioned(self) -> list[dict]:
        """Each `vagrant provision` of a running machine: machine, user_data, payload."""
        return _read_lines(self.state_dir / "provisioned.jsonl")

    def ssh_commands(self) -> list[tuple[str, str]]:
        return [(r["machine"], r["command"]) for r in _read_lines(self.state_dir / "ssh.jsonl")]

    def states(self) -> dict[str, str]:
        return _read_json(self.state_dir / "machines.json", {})

    def set_state(self, machine: str, state: str) -> None:
        states = self.states()
        states[machine] = state
        _write_json(self.state_dir / "machines.json", states)

    def fail(self, command: str, machine: str | None = None, *, stderr: str,
             stdout: str = "", exit_code: int = 1) -> None:
        failures = _read_json(self.state_dir / "failures.json", [])
        failures.append({"command": command, "machine": machine, "stderr": stderr,
                         "stdout": stdout, "exit_code": exit_code})
        _write_json(self.state_dir / "failures.json", failures)


def install(directory: Path) -> FakeVagrant:
    bin_dir, state_dir = directory / "bin", directory / "fake-vagrant"
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    fake = FakeVagrant(bin_dir, state_dir)
    fake.executable.write_text(_SHIM.format(python=sys.executable, repo=str(REPO),
                                            state=str(state_dir)))
    fake.executable.chmod(0o755)
    return fake


def use_for_the_cli(tmp_path: Path, monkeypatch) -> FakeVagrant:
    """The fake on PATH, in place of the real one for `provision`'s Vagrant provider (a
    checkout of its own whose Vagrantfile the fake never reads), state and cwd under
    `tmp_path`."""
    from provision.providers import vagrant_lifecycle
    from provision.providers.vagrant import VagrantProvider

    fake = install(tmp_path / "fake")
    monkeypatch.setenv("PATH", f"{fake.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "Vagrantfile").write_text("# the fake vagrant defines the machines\n")
    monkeypatch.setattr(vagrant_lifecycle, "driver", lambda: VagrantProvider(root))
    monkeypatch.setenv("VAGRANT_CWD", str(root))
    monkeypatch.setenv("PROVISION_STATE", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return fake


def main(state_dir: str) -> int:
    state = Path(state_dir)
    argv = sys.argv[1:]
    env = {k: v for k, v in os.environ.items() if k.startswith(("VAGRANT_", "PROVISION_"))}
    with open(state / "calls.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env}) + "\n")

    if argv[:1] in (["--version"], ["-v"]):
        print("Vagrant 2.3.4")
        return 0
    command = next((a for a in argv if not a.startswith("-")), "")
    valued = {i + 1 for i, a in enumerate(argv) if a in ("--command", "-c", "--provision-with")}
    targets = [a for i, a in enumerate(argv)
               if not a.startswith("-") and a != command and i not in valued]
    machine_readable = "--machine-readable" in argv

    machines = _manifest_machines()
    if machines is None:
        return 1
    for failure in _read_json(state / "failures.json", []):
        if failure["command"] == command and failure["machine"] in (None, *targets):
            sys.stdout.write(failure["stdout"])
            sys.stderr.write(failure["stderr"])
            return failure["exit_code"]
    unknown = [t for t in targets if t not in machines]
    if unknown:
        return _machine_not_found(unknown[0], machine_readable)

    states = _read_json(state / "machines.json", {})
    chosen = targets or machines
    if command == "status":
        _print_status(chosen, states)
        return 0
    if command in ("provision", "ssh"):
        return _on_machine(state, command, argv, chosen, states)
    failed = _change_states(command, argv, chosen, states)
    if failed is not None:
        return failed
    _write_json(state / "machines.json", states)
    return 0


def _machine_not_found(name: str, machine_readable: bool) -> int:
    message = (f"The machine with the name '{name}' was not found configured for\n"
               "this Vagrant environment.")
    if machine_readable:
        print(f"{int(time.time())},,error-exit,Vagrant::Errors::MachineNotFound,"
              + message.replace("\n", "\\n").replace(",", "%!(VAGRANT_COMMA)"))
    else:
        print(message, file=sys.stderr)
    return 1


def _on_machine(state: Path, command: str, argv: list[str], chosen: list[str],
                states: dict[str, str]) -> int:
    for name in chosen:
        if states.get(name) != RUNNING:
            if command == "ssh":
                print("VM must be running to open SSH connection. Run `vagrant up`\n"
                      "to start the virtual machine.", file=sys.stderr)
                return 1
            print(f"==> {name}: Domain is not running. Please run `vagrant up` first.")
            continue
        if command == "ssh":
            record = {"machine": name, "command": argv[argv.index("--command") + 1]}
            with open(state / "ssh.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            continue
        manifest_path = _manifest_path()
        data = json.loads(manifest_path.read_text())
        node = next(n for n in data["nodes"] if n["name"] == name)
        record = {"machine": name,
                  "user_data": (manifest_path.parent / node["user_data"]).read_text(),
                  "payload": (manifest_path.parent / data["vagrant"]["payload"]).is_file()}
        with open(state / "provisioned.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        print(f"==> {name}: Running provisioner: install (shell)...")
    return 0


def _manifest_path() -> Path:
    given = os.environ.get("PROVISION_MANIFEST", "")
    path = Path(given) if given else Path(Path("out/.last-manifest").read_text().strip())
    return path / "manifest.json" if path.is_dir() else path


def _change_states(command: str, argv: list[str], chosen: list[str],
                   states: dict[str, str]) -> int | None:
    """What `up`, `halt` and `destroy` do to the machines' states; an exit code on failure."""
    if command == "up":
        for name in chosen:
            print(f"Bringing machine '{name}' up with '{PROVIDER}' provider...")
            print(f"==> {name}: Machine booted and ready!")
            states[name] = RUNNING
    elif command == "halt":
        for name in chosen:
            print(f"==> {name}: Attempting graceful shutdown of VM...")
            states[name] = "shutoff"
    elif command == "destroy":
        if "--force" not in argv and "-f" not in argv:
            print("Vagrant is attempting to interface with the UI in a way that requires\n"
                  "a TTY. Most actions in Vagrant that require a TTY have configuration\n"
                  "switches to disable this requirement. Please do that or run Vagrant\n"
                  "with TTY.", file=sys.stderr)
            return 1
        for name in chosen:
            print(f"==> {name}: Removing domain...")
            states[name] = NOT_CREATED
    else:
        print(f"fake vagrant: `{command}` is not faked", file=sys.stderr)
        return 1
    return None


def _manifest_machines() -> list[str] | None:
    """Machine names as the Vagrantfile would define them (None: it would abort)."""
    given = os.environ.get("PROVISION_MANIFEST", "")
    path = Path(given) if given else Path("out/.last-manifest")
    try:
        if not given:
            path = Path(path.read_text().strip())
        if path.is_dir():
            path = path / "manifest.json"
        return [node["name"] for node in json.loads(path.read_text())["nodes"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"{path}: cannot read the node manifest ({err})", file=sys.stderr)
        return None


def _print_status(names: list[str], states: dict[str, str]) -> None:
    now = int(time.time())
    human = {NOT_CREATED: "not created", RUNNING: "running"}
    for name in names:
        state = states.get(name, NOT_CREATED)
        print(f"{now},{name},metadata,provider,{PROVIDER}")
        print(f"{now},{name},provider-name,{PROVIDER}")
        print(f"{now},{name},state,{state}")
        print(f"{now},{name},state-human-short,{human.get(state, state)}")
        print(f"{now},{name},state-human-long,The domain is {human.get(state, state)}.")
    shown = {n: states.get(n, NOT_CREATED) for n in names}
    summary = "\\n".join(f"{n:<25} {human.get(s, s)} ({PROVIDER})" for n, s in shown.items())
    print(f"{now},,ui,info,Current machine states:\\n\\n{summary}")


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def _write_json(path: Path, value) -> None:
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps(value))
    os.replace(staged, path)
