"""How the processes of a server and the servers of one database act as one hub.

- messages.py    the cluster protocol: one frozen dataclass per message, `encode` / `decode`
- directory.py   which process or server serves each device, since when
- hub.py         `ClusterHub`: this process's connections, the directory and the transports
- forgetting.py  the one place a change makes a process forget cached device contexts
- transport.py   what a transport offers; the socket-pair one between a primary and a worker
- bus.py         the NATS one between servers (`--bus`)
"""
