"""Rendered CoreOS cloud-configs (`user-data-N`) as coreos-cloudinit v1.13.0 reads them:
validation (`coreos-cloudinit -validate`), `write_files` decoding and `$private_ipv4`
substitution."""

from provision.userdata.validate import is_cloud_config, validate_user_data

__all__ = ["is_cloud_config", "validate_user_data"]
