"""Event and state routing: where telemetry goes once a bridge has accepted it."""
