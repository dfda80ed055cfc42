"""Validation of rendered CoreOS cloud-configs (`user-data-N`), as `coreos-cloudinit -validate`."""

from provision.cloudconfig.validate import validate_user_data

__all__ = ["validate_user_data"]
