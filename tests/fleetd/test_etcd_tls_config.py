"""fleetd's etcd TLS settings (fleet's etcd_cafile / etcd_certfile / etcd_keyfile)."""

from __future__ import annotations

import pytest

from fleetd.config import ConfigError, etcd_tls, load_config
from fleetd.registry.etcd import Etcd

HTTPS = "https://127.0.0.1:2379"
FILES = ["--etcd-cafile", "/etc/ssl/etcd/ca.pem", "--etcd-certfile", "/etc/ssl/etcd/fleetd.pem",
         "--etcd-keyfile", "/etc/ssl/etcd/fleetd-key.pem"]


@pytest.mark.parametrize(("argv", "env", "fragment"), [
    pytest.param(["--etcd-servers", HTTPS], {}, "https etcd servers need etcd_cafile",
                 id="https-without-certificates"),
    pytest.param(["--etcd-cafile", "/ca.pem"], {}, "etcd_cafile given without etcd_certfile, "
                 "etcd_keyfile", id="ca-alone"),
    pytest.param([], {"FLEET_ETCD_CERTFILE": "/c.pem", "FLEET_ETCD_KEYFILE": "/k.pem"},
                 "$FLEET_ETCD_CERTFILE: etcd_certfile, etcd_keyfile given without etcd_cafile",
                 id="env-without-ca"),
])
def test_incomplete_tls_settings_are_refused_naming_their_source(argv, env, fragment):
    with pytest.raises(ConfigError, match="mutual TLS|need") as err:
        load_config(argv, env)
    assert fragment in str(err.value)


def test_tls_files_are_node_paths_found_under_the_root_dir(tmp_path):
    config = load_config(["--etcd-servers", HTTPS, "--root-dir", str(tmp_path), *FILES], {})
    tls = etcd_tls(config)
    assert tls.ca_file == str(tmp_path / "etc/ssl/etcd/ca.pem")
    assert tls.key_file == str(tmp_path / "etc/ssl/etcd/fleetd-key.pem")
    plain = load_config(["--etcd-servers", HTTPS, *FILES], {})
    assert etcd_tls(plain).cert_file == "/etc/ssl/etcd/fleetd.pem"
    assert etcd_tls(load_config([], {})) is None


def test_an_https_endpoint_without_certificates_is_refused_by_the_client():
    with pytest.raises(ValueError, match="https etcd endpoints need"):
        Etcd([HTTPS])
