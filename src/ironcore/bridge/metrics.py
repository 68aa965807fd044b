"""Prometheus metrics of the device bridges (served on the admin API's /metrics).

The HTTP request metrics, which the HTTP device bridge shares with the admin API, and the
merge of the MQTT workers' figures are `ironcore.metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTED = Gauge(
    "ironcore_mqtt_connected_devices", "Devices connected over MQTT (incl. via gateways)"
)
CONNECTIONS = Gauge("ironcore_mqtt_connections", "Open MQTT network connections")
CONNECTS = Counter("ironcore_mqtt_connects_total", "MQTT CONNECTs by result", ["result"])
AUTH_FAILURES = Counter(
    "ironcore_device_auth_failures_total", "Refused device authentications", ["bridge", "reason"]
)
MESSAGES_IN = Counter("ironcore_mqtt_messages_in_total", "PUBLISHes from devices", ["kind"])
MESSAGES_OUT = Counter("ironcore_mqtt_messages_out_total", "PUBLISHes to devices", ["kind"])
PUBACK_LATENCY = Histogram(
    "ironcore_mqtt_puback_seconds",
    "From a QoS 1 PUBLISH to its PUBACK, including the durable append; one observation per "
    "acknowledgement write, of the oldest PUBLISH it acknowledges",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
CONFIG_ACKS = Counter("ironcore_mqtt_config_acks_total", "Config versions acknowledged by devices")
WRITE_PAUSED = Gauge(
    "ironcore_mqtt_write_paused_connections",
    "MQTT connections holding back what they send: the device does not read it (the "
    "transport's buffer is past its high-water mark)",
)
DISCONNECTS = Counter("ironcore_mqtt_disconnects_total", "MQTT disconnects by reason", ["reason"])
BUS_CONNECTED = Gauge(
    "ironcore_bus_connected", "1 while this server is connected to NATS (--bus), 0 while not"
)
BUS_SERVERS = Gauge(
    "ironcore_bus_servers", "The other servers of the database heard within their lease (--bus)"
)
