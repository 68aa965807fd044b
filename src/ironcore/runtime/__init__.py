"""The composition root: the one place a process of ironcore is built from its `Settings`.

Every object a process runs with is made here, by constructor arguments, in dependency order;
nothing below is wired by setting attributes after the fact, and no other package builds a
service it is not given.

- `parts.py`     what the processes of a server build alike: their storage (store, event log,
                 JetStream sink), their device side (revoked signers, authenticator and context
                 cache, cluster hub, rotations, the device channel), a primary's services
                 (device manager, admin tokens, Pub/Sub, revocations, firmware), and the order
                 they are closed in
- `tls.py`       the device bridges' TLS files and context: the operator's, or a local CA and
                 server certificate generated in the data directory at start (shared through
                 the database by the servers of a cluster)
- `process.py`   what every server process sets up alike: its event loop, the collector's
                 tuning, its open-file limit and its listeners' connection caps
- `http.py`      the primary's HTTP servers: uvicorn with request deadlines and a connection cap
- `primary.py`   `ironcore serve`: the primary process, its adapters (admin API, HTTP and MQTT
                 device bridges), MQTT workers, bus, background tasks and signals
- `worker.py`    an MQTT worker process (`python -m ironcore.runtime.worker`)
- `inprocess.py` the admin API alone over a given device manager, in process (tests, tools)

This module imports nothing, so that a worker loads none of the admin API.
"""
