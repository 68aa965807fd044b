"""The limits and id rules of the Cloud IoT Core contract, in one place.

The numbers are Cloud IoT Core's published quotas and requirements (Google's Cloud IoT Core
documentation, "Quotas and limits", and the id rules of "Creating registries and devices";
docs/api.md lists them as ironcore applies them). Existing device and admin code was written
against them, so ironcore keeps them rather than inventing its own. Bounds that are ironcore's
own rather than the contract's (the size of a device JWT, of a firmware manifest, the MQTT
bridge's buffers, the device context cache) are defined beside the code they bound, each with
the reason for its number.
"""

import re

# Ids: `[a-zA-Z][-a-zA-Z0-9._+~%]+`, 3 to 255 characters, not starting with "goog".
ID_PATTERN = re.compile(r"[a-zA-Z][-a-zA-Z0-9._+~%]{2,254}")
RESERVED_ID_PREFIX = "goog"
METADATA_KEY_PATTERN = re.compile(r"[a-zA-Z][-a-zA-Z0-9._+~%]{0,127}")
SUBFOLDER_PATTERN = re.compile(r"[a-zA-Z][-a-zA-Z0-9._+~%]*")
# Subfolders: a registry's `subfolderMatches` and a command's subfolder (both published as 256
# bytes), and an event's (the MQTT topic after `events/`, HTTP `subFolder`): it must be able to
# equal a `subfolderMatches` to be routed, and becomes the Pub/Sub attribute `subFolder` (whose
# values Pub/Sub bounds at 1024 bytes). Event subfolders keep any other character, `/` included.
SUBFOLDER_MAX_BYTES = 256
# Command subfolders may be multi-level and are checked by their forbidden characters only.
COMMAND_SUBFOLDER_FORBIDDEN = frozenset("+#\x00")

REGISTRIES_PER_LOCATION = 100
EVENT_NOTIFICATION_CONFIGS = 10
REGISTRY_CREDENTIALS = 10
DEVICE_CREDENTIALS = 3

METADATA_PAIRS = 500
METADATA_KEY_BYTES = 128
METADATA_VALUE_BYTES = 32 * 1024
METADATA_TOTAL_BYTES = 256 * 1024

CONFIG_BYTES = 64 * 1024
CONFIG_VERSIONS_KEPT = 10
CONFIG_UPDATE_INTERVAL_SECONDS = 1.0
STATE_BYTES = 64 * 1024
STATES_KEPT = 10
STATE_UPDATE_INTERVAL_SECONDS = 1.0
EVENT_BYTES = 256 * 1024
COMMAND_BYTES = 256 * 1024

DEVICES_PER_GATEWAY = 10_000
GATEWAYS_PER_DEVICE = 10

LIST_PAGE_SIZE_MAX = 500
LIST_DEVICE_IDS_MAX = 10_000

# RSA keys below 2048 bits are refused; ES256 means the P-256 curve and nothing else.
RSA_MIN_BITS = 2048

JWT_CLOCK_SKEW_SECONDS = 10 * 60
JWT_MAX_LIFETIME_SECONDS = 24 * 60 * 60
MQTT_IDLE_SECONDS = 20 * 60

# Numeric device ids have the shape of Cloud IoT Core's: 16 decimal digits.
NUM_ID_MIN = 10**15
NUM_ID_MAX = 10**16 - 1


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value)) and not value.startswith(RESERVED_ID_PREFIX)
