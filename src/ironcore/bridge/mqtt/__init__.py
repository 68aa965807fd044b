"""The MQTT 3.1.1 bridge: the endpoint Cloud IoT Core devices connect to."""
