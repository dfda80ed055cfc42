"""Render a large cluster to files and print how long it takes.

    python bench/render.py [--nodes 1000] [--repeat 3]

Times the whole `provision render` path (load + validate + render + atomic write)
for an N-node local cluster with static discovery (3 members, the rest proxies),
next to a baseline measured in the same run: yaml.safe_dump of the same per-node
dicts written to files (what a template-less renderer would cost). Last line:
`nodes=N render_s=X baseline_s=Y ratio=X/Y`. Goal: render_s < 1 at 1,000 nodes.

The cluster uses mutual TLS (the default): the first render makes the CA and 3
certificates per node (`first_render_s`); later renders reuse them (`render_s`, best of
the repeats); `plain_render_s` is the same cluster with `tls: false`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision.cli.root import main as provision_main
from provision.pki import for_cluster
from provision.render.cloudconfig import ResolvedDiscovery, node_cloud_config
from provision.spec.build import load_cluster


def cluster_yaml(nodes: int, tls: bool = True) -> str:
    width = max(2, len(str(nodes)))
    members = ", ".join(f"core-{i:0{width}d}" for i in (1, 2, 3))
    return f"""\
name: bench{'' if tls else '-plain'}
tls: {'true' if tls else 'false'}
provider: local
network: {{cidr: 127.80.0.0/16, start: 1}}
nodes:
  count: {nodes}
  metadata: {{region: bench}}
etcd:
  members: [{members}]
  discovery: {{mode: static}}
fleet: {{agent_ttl: 5s}}
flannel: {{interface: $public_ipv4, config: {{Network: 10.1.0.0/16}}}}
write_files:
  - path: /etc/environment
    permissions: "0644"
    content: |
      COREOS_PUBLIC_IPV4=$public_ipv4
      COREOS_PRIVATE_IPV4=$private_ipv4
"""


def best_of(repeat: int, action) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-render-"))
    os.environ["PROVISION_STATE"] = str(work / "state")  # the cluster's CA and certificates
    try:
        source = work / "bench.yaml"
        source.write_text(cluster_yaml(args.nodes))
        plain = work / "plain.yaml"
        plain.write_text(cluster_yaml(args.nodes, tls=False))
        out = work / "out"

        def render(path: Path = source) -> None:
            if provision_main(["render", str(path), "-o", str(out)]) != 0:
                raise SystemExit("render failed")

        def baseline() -> None:
            cluster, _ = load_cluster(source)
            pki = for_cluster(cluster)
            disc = ResolvedDiscovery(None, len(cluster.members))
            target = work / "baseline"
            target.mkdir(exist_ok=True)
            for node in cluster.nodes:
                config = node_cloud_config(cluster, node, disc, tls=pki.node(node.name))
                (target / node.user_data_name).write_text("#cloud-config\n"
                                                          + yaml.safe_dump(config))

        first_s = best_of(1, render)
        render_s = best_of(args.repeat, render)
        plain_s = best_of(args.repeat, lambda: render(plain))
        baseline_s = best_of(args.repeat, baseline)
        files = len(list(out.iterdir()))
        print(f"rendered {args.nodes} nodes into {files} files, best of {args.repeat}")
        print(f"nodes={args.nodes} first_render_s={first_s:.3f} (CA + "
              f"{3 * args.nodes + 1} certificates made) plain_render_s={plain_s:.3f}")
        print(f"nodes={args.nodes} render_s={render_s:.3f} baseline_s={baseline_s:.3f} "
              f"ratio={render_s / baseline_s:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
