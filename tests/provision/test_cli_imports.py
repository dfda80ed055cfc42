"""`provision down` and `status` of a local cluster stay cheap to start: the etcd client
(etcd3 and grpc, ~0.15 s to import) loads only where a command talks to etcd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_down_of_a_local_cluster_never_imports_the_etcd_client(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "plan.json").write_text("{}")  # a cluster that is not running
    probe = ("import runpy, sys\n"
             "sys.argv = ['provision', 'down', 'local']\n"
             "try:\n"
             "    runpy.run_module('provision.cli', run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print(sorted(m for m in ('etcd3', 'grpc') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, "PROVISION_STATE": str(tmp_path)}, timeout=60)
    assert "local: was not running" in result.stdout, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
