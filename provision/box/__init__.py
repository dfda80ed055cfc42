"""Vagrant machines from the host's side: the lxc box, what every machine is provisioned
from, and the network namespace vagrant-lxc machines live in.

    recipe.py   what the lxc box and the machines' payload are made of, and their keys (pure)
    debs.py     the Debian packages a plain bookworm machine lacks, resolved by apt (pure
                parsing) and fetched on the host
    build.py    `ensure_box()`: the vagrant-lxc box, built by the image builder's base
                steps plus a box layer, cached, and `vagrant box add`ed
    payload.py  `prepare_machines()`: the payload every Vagrant machine installs offline
                (this project's wheelhouse, Debian debs, install-machine.sh), cached by
                content and placed beside the rendered manifest for the Vagrantfile
    netns.py    a network namespace with the cluster's bridge, and commands run inside it
                the way LXC needs them
    cli.py      `provision box build|payload`
    install-machine.sh   run by the Vagrantfile inside each machine (as root)
"""
