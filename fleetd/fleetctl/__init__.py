"""`fleetctl`: the command line of fleet, talking to fleetd's HTTP API (fleet API v1).

Layout: `client` speaks HTTP (unix socket or TCP) and maps API answers to typed
errors; `model` holds the API's records; `targets` turns arguments (files, names,
globs, template instances) into unit names; `lists`, `lifecycle` and `inspect`
are the commands and return data; `columns` and `tables` format it; `waiting`
polls until units converge; `main` parses arguments and is the one place that
turns errors into messages and exit codes (0 ok, 1 the cluster said no, 2 usage).
"""
