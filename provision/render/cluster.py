"""The render pipeline, written once: load → warn → resolve discovery → render → write.

`provision render`, and every provider's `up`, go through `render_cluster_files`; a
provider that must compare before it writes (the local one: a running cluster with a
changed definition is refused) calls `Rendered.changed` first and `Rendered.write` after.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.render import discovery
from provision.render.output import default_output_dir
from provision.render.pipeline import RenderedFile, render_cluster
from provision.spec.model import Cluster

Warn = Callable[[str], None]


def print_warning(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass(frozen=True)
class Rendered:
    cluster: Cluster
    out_dir: Path
    files: list[RenderedFile]
    discovery_record: dict | None

    def changed(self) -> bool:
        """Whether any file differs from what `out_dir` holds (or is missing there)."""
        for item in self.files:
            try:
                if (self.out_dir / item.name).read_text() != item.text:
                    return True
            except OSError:
                return True
        return False

    def write(self) -> None:
        """Into `out_dir`, all or nothing (provision.render.output)."""
        from provision.render.output import write_rendered

        write_rendered(self.out_dir, self.files, self.discovery_record)


def load(cluster_path: str | Path, warn: Warn = print_warning) -> Cluster:
    """The cluster model of a YAML file; its warnings go to `warn`, errors raise UserError."""
    from provision.spec.build import load_cluster

    cluster, warnings = load_cluster(str(cluster_path))
    for problem in warnings:
        warn(str(problem))
    return cluster


def render_cluster_files(cluster: Cluster, out_dir: Path, *, new_token: bool = False,
                         substitute: bool = False,
                         pki_dir: str | Path | None = None) -> Rendered:
    """Resolve the cluster's discovery (a token is cached in `out_dir`) and render it, with
    the cluster's certificates (made or reused in `pki_dir`, by default with its state)."""
    from provision.pki import for_cluster

    resolved, record = discovery.resolve(cluster, out_dir, new_token=new_token)
    files = render_cluster(cluster, resolved, substitute=substitute,
                           pki=for_cluster(cluster, pki_dir))
    return Rendered(cluster, Path(out_dir), files, record)


def render_to(cluster_path: str | Path, out_dir: Path | None = None, *,
              warn: Warn = print_warning, new_token: bool = False,
              substitute: bool = False, pki_dir: str | Path | None = None) -> Rendered:
    """load → warn → resolve → render → write; `out_dir` defaults to out/<cluster name>."""
    cluster = load(cluster_path, warn)
    rendered = render_cluster_files(cluster, out_dir or default_output_dir(cluster.name),
                                    new_token=new_token, substitute=substitute,
                                    pki_dir=pki_dir)
    rendered.write()
    return rendered
