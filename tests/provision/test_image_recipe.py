"""The machine image's recipe and cache keys (pure), and what the builder reads from a
checkout: an image is rebuilt exactly when what goes into it changes."""

from __future__ import annotations

import pytest

from provision.errors import UserError
from provision.image import recipe
from provision.image.build import find_source, project_metadata, source_files
from tests.conftest import REPO


def test_the_base_key_follows_the_package_list_not_the_mirror():
    spec = recipe.base_spec("http://deb.debian.org/debian")
    same = recipe.base_spec("http://mirror.example/debian")
    assert recipe.base_key(spec) == recipe.base_key(same)
    more = dict(spec, packages=spec["packages"] + ["vim"])
    assert recipe.base_key(more) != recipe.base_key(spec)
    assert recipe.base_key(spec).startswith("base-")


@pytest.mark.parametrize("change", [
    pytest.param({"version": "0.2.0"}, id="version"),
    pytest.param({"requirements": ["pyyaml>=7"]}, id="dependencies"),
    pytest.param({"source_digest": "0123456789abcdef"}, id="source"),
    pytest.param({"base": "base-ffffffffffffffff"}, id="base"),
])
def test_the_image_key_changes_with_what_goes_into_the_image(change):
    args = {"base": "base-1", "version": "0.1.0", "requirements": ["pyyaml>=6"],
            "source_digest": "aaaa"}
    before = recipe.project_key(recipe.project_spec(**args))
    after = recipe.project_key(recipe.project_spec(**{**args, **change}))
    assert before != after and after.startswith("image-")


def test_the_source_digest_is_order_independent_and_content_sensitive():
    files = [("provision/a.py", b"a"), ("fleetd/b.py", b"b")]
    assert recipe.source_digest(files) == recipe.source_digest(list(reversed(files)))
    assert recipe.source_digest(files) != recipe.source_digest([("provision/a.py", b"A"),
                                                                ("fleetd/b.py", b"b")])


@pytest.mark.parametrize("path, included", [
    pytest.param("pyproject.toml", True, id="pyproject"),
    pytest.param("README.md", True, id="readme"),
    pytest.param("provision/cli/root.py", True, id="module"),
    pytest.param("provision/machine/units/provision-cloudinit.service", True, id="data"),
    pytest.param("provision/__pycache__/cli.cpython-311.pyc", False, id="bytecode"),
    pytest.param("fleetd/x.pyc", False, id="pyc"),
    pytest.param("tests/test_x.py", False, id="tests"),
    pytest.param("bench/image.py", False, id="bench"),
    pytest.param("provision/.hidden", False, id="hidden"),
    pytest.param("setup.cfg", False, id="other-top-level"),
])
def test_which_files_make_the_wheel(path, included):
    assert recipe.is_source_file(path) is included


def test_the_checkout_gives_its_files_version_and_dependencies():
    root = find_source(REPO)
    names = {relative for relative, _path in source_files(root)}
    assert {"pyproject.toml", "provision/machine/applier.py",
            "provision/machine/units/provision-cloudinit.service"} <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    version, requirements = project_metadata(root)
    assert version and any(r.startswith("pyyaml") for r in requirements)


def test_a_directory_that_is_no_checkout_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="not a source checkout of provision-fleetd"):
        find_source(tmp_path)
