"""`fleetd announce`: keep a service's etcd key alive only while its health check passes.

The seeds' discovery sidekick was a shell loop (`etcdctl set … --ttl 60; sleep 45`) that
announced the service whether or not it answered. This one:

- reads its machine's public IP from fleet's own machine record (`--machine %m`);
- every `--interval` (default ttl/3) checks the service (`tcp` connect or `http` GET of
  `--path`, a 2xx/3xx answer) on that IP and `--port`;
- while the check passes, holds `--key` = {"host", "ip", "port", "machine", "unit"} bound to
  an etcd lease of `--ttl` seconds and refreshes the lease; when the check fails, revokes
  the lease, so the key is gone at once; if the announcer dies, the key expires by itself;
- on SIGTERM/SIGINT revokes the lease and exits 0.

    checks.py   the health checks (pure but for the socket)
    announcer.py the loop
    main.py     arguments
"""
