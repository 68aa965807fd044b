"""The admin REST API for registries and IAM policies, against the in-process app on SQLite and
PostgreSQL: the wire format, every rule and limit, and that a refused write changes nothing."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx

from ironcore.access.roles import PERMISSIONS
from ironcore.registry.iam import APPLICABLE
from ironcore.registry.names import LocationName
from ironcore.registry.resources import DeviceRegistry
from ironcore.registry.service import DeviceManager
from ironcore.registry.wire import parse_timestamp
from tests.api.errors import assert_error
from tests.conftest import Api
from tests.keys import es256_key, make_ca, public_pem

PROJECT, LOCATION = "p1", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
REGISTRIES = f"/v1/{PARENT}/registries"
TOPIC = f"projects/{PROJECT}/topics/events"
GOOGLE_QUERY = {"$alt": "json;enum-encoding=int", "alt": "json", "prettyPrint": "false"}
IGNORED_QUERY = {**GOOGLE_QUERY, "fields": "name", "$.xgafv": "2"}


async def create(api: Api, body: dict[str, Any], parent: str = REGISTRIES) -> httpx.Response:
    return await api.client.post(parent, json=body)


async def created(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    response = await create(api, body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def registry_ids(api: Api, parent: str = REGISTRIES) -> list[str]:
    response = await api.client.get(parent)
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["deviceRegistries"]]


async def read(api: Api, registry: str) -> dict[str, Any]:
    # Ids may hold '%', which a URL path must escape.
    response = await api.client.get(f"{REGISTRIES}/{quote(registry, safe='')}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()


# Wire format


async def test_create_returns_camel_case_enums_by_name_and_the_full_name(api: Api) -> None:
    body = {
        "id": "reg-wire",
        "eventNotificationConfigs": [
            {"subfolderMatches": "alerts", "pubsubTopicName": f"projects/{PROJECT}/topics/alerts"},
            {"pubsubTopicName": TOPIC},
        ],
        "stateNotificationConfig": {"pubsubTopicName": f"projects/{PROJECT}/topics/state"},
        "mqttConfig": {"mqttEnabledState": "MQTT_ENABLED"},
        "httpConfig": {"httpEnabledState": "HTTP_DISABLED"},
        "logLevel": "INFO",
    }
    registry = await created(api, body)
    assert registry == {**body, "name": f"{PARENT}/registries/reg-wire"}
    assert await read(api, "reg-wire") == registry


async def test_create_accepts_snake_case_and_enum_numbers(api: Api) -> None:
    registry = await created(
        api,
        {
            "id": "reg-snake",
            "event_notification_configs": [{"pubsub_topic_name": TOPIC}],
            "mqtt_config": {"mqtt_enabled_state": 2},
            "http_config": {"http_enabled_state": 1},
            "log_level": 40,
        },
    )
    assert registry["eventNotificationConfigs"] == [{"pubsubTopicName": TOPIC}]
    assert registry["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert registry["httpConfig"] == {"httpEnabledState": "HTTP_ENABLED"}
    assert registry["logLevel"] == "DEBUG"
    assert not any("_" in key for key in all_keys(registry))


async def test_null_fields_mean_unset(api: Api) -> None:
    registry = await created(api, {"id": "reg-null", "mqttConfig": None, "logLevel": None})
    assert registry == {"id": "reg-null", "name": f"{PARENT}/registries/reg-null"}


async def test_unknown_query_parameters_are_ignored(api: Api) -> None:
    response = await api.client.post(REGISTRIES, params=IGNORED_QUERY, json={"id": "reg-q"})
    assert response.status_code == 200, response.text
    got = await api.client.get(f"{REGISTRIES}/reg-q", params=IGNORED_QUERY)
    assert got.status_code == 200
    assert got.json() == {"id": "reg-q", "name": f"{PARENT}/registries/reg-q"}
    listed = await api.client.get(REGISTRIES, params={**IGNORED_QUERY, "page_size": "5"})
    assert [r["id"] for r in listed.json()["deviceRegistries"]] == ["reg-q"]


REFUSED_CREATES: list[tuple[dict[str, Any], str]] = [
    # Unknown fields, named as the client spelled them.
    ({"id": "reg-x", "bogus": 1}, "bogus"),
    ({"id": "reg-x", "mqttConfig": {"enabled": True}}, "mqttConfig.enabled"),
    (
        {"id": "reg-x", "eventNotificationConfigs": [{"pubsubTopicName": TOPIC, "x": 1}]},
        "eventNotificationConfigs.0.x",
    ),
    # Values of the wrong type or out of the enum.
    ({"id": "reg-x", "mqttConfig": {"mqttEnabledState": "ON"}}, "mqttConfig.mqttEnabledState"),
    ({"id": "reg-x", "httpConfig": {"httpEnabledState": 3}}, "httpConfig.httpEnabledState"),
    ({"id": "reg-x", "logLevel": 15}, "logLevel"),
    ({"id": 12345}, "id"),
    ({"id": "reg-x", "eventNotificationConfigs": {"pubsubTopicName": TOPIC}}, "eventNotif"),
    # Server-assigned fields.
    ({"id": "reg-n", "name": f"{PARENT}/registries/reg-n"}, "name"),
]


async def test_refused_creates_name_the_field_and_create_nothing(api: Api) -> None:
    for body, field in REFUSED_CREATES:
        assert_error(await create(api, body), 400, "INVALID_ARGUMENT", field)
    assert await registry_ids(api) == []


async def test_a_body_that_is_not_a_json_object_is_refused(api: Api) -> None:
    for content in (b"{bad json", b"[]", b'"reg"', b"null", b"", b'{"id": "reg-x"'):
        response = await api.client.post(REGISTRIES, content=content)
        assert_error(response, 400, "INVALID_ARGUMENT")
    assert await registry_ids(api) == []


async def test_unknown_paths_and_methods_answer_with_the_envelope(api: Api) -> None:
    assert_error(await api.client.get("/v1/nowhere"), 404, "NOT_FOUND")
    assert_error(await api.client.put(f"{REGISTRIES}/reg-x", json={}), 405, "UNIMPLEMENTED")


# Ids

BAD_IDS = [
    "",
    "ab",
    "1abc",
    "-abc",
    "reg with space",
    "reg/slash",
    "reg$",
    "régistry",
    "goog",
    "googreg",
    "goog-x",
    "a" * 256,
]


async def test_bad_registry_ids_are_refused(api: Api) -> None:
    for registry_id in BAD_IDS:
        assert_error(await create(api, {"id": registry_id}), 400, "INVALID_ARGUMENT", "id")
    assert await registry_ids(api) == []


async def test_good_registry_ids_are_accepted(api: Api) -> None:
    good = ["abc", "a" * 255, "Reg-1.x_y+z~w%20", "GOOG-upper"]
    for registry_id in good:
        assert (await created(api, {"id": registry_id}))["id"] == registry_id
        assert (await read(api, registry_id))["id"] == registry_id
    assert sorted(await registry_ids(api)) == sorted(good)


async def test_duplicate_registry_is_already_exists(api: Api) -> None:
    await created(api, {"id": "reg-dup", "logLevel": "INFO"})
    assert_error(await create(api, {"id": "reg-dup"}), 409, "ALREADY_EXISTS")
    assert (await read(api, "reg-dup"))["logLevel"] == "INFO"
    # Ids are case-sensitive, and unique per project and location only.
    await created(api, {"id": "REG-DUP"})
    other = f"/v1/projects/{PROJECT}/locations/europe-west1/registries"
    assert (await create(api, {"id": "reg-dup"}, other)).status_code == 200
    assert sorted(await registry_ids(api)) == ["REG-DUP", "reg-dup"]


async def test_bad_parent_is_refused(api: Api) -> None:
    for path in (
        "/v1/projects/p1/locations/US_CENTRAL/registries",
        "/v1/projects/p%20x/locations/us-central1/registries",
        "/v1/projects/-p/locations/us-central1/registries",
    ):
        response = await api.client.post(path, json={"id": "reg-x"})
        assert_error(response, 400, "INVALID_ARGUMENT", "parent")


# Notification configs


async def test_at_most_ten_event_notification_configs(api: Api) -> None:
    configs = [
        {"subfolderMatches": f"sub{i}", "pubsubTopicName": f"projects/{PROJECT}/topics/events-{i}"}
        for i in range(11)
    ]
    response = await create(api, {"id": "reg-11", "eventNotificationConfigs": configs})
    assert_error(response, 400, "INVALID_ARGUMENT", "event_notification_configs")
    assert await registry_ids(api) == []
    registry = await created(api, {"id": "reg-10", "eventNotificationConfigs": configs[:10]})
    assert len(registry["eventNotificationConfigs"]) == 10


async def test_bad_subfolder_matches_is_refused(api: Api) -> None:
    for subfolder in ("/alerts", "1abc", "with space", "a/b", "a#", "x" * 257):
        configs = [
            {"pubsubTopicName": TOPIC},
            {"subfolderMatches": subfolder, "pubsubTopicName": TOPIC},
        ]
        response = await create(api, {"id": "reg-sub", "eventNotificationConfigs": configs})
        assert_error(
            response, 400, "INVALID_ARGUMENT", "event_notification_configs[1].subfolder_matches"
        )
    assert await registry_ids(api) == []


BAD_TOPICS = [
    "events",
    "projects/p1/topics",
    "projects//topics/events",
    "projects/p1/topics/",
    "projects/p1/subscriptions/t",
    "projects/p1/topics/events/extra",
    "topics/events",
    # Pub/Sub's id rules: 3 to 255 characters from a letter, not "goog..."; a usable project.
    "projects/p1/topics/t",
    "projects/p1/topics/1events",
    "projects/p1/topics/goog-events",
    "projects/p1/topics/" + "e" * 256,
    "projects/p 1/topics/events",
]


async def test_bad_topic_names_are_refused(api: Api) -> None:
    for topic in ["", *BAD_TOPICS]:
        events = {"id": "reg-t", "eventNotificationConfigs": [{"pubsubTopicName": topic}]}
        assert_error(
            await create(api, events),
            400,
            "INVALID_ARGUMENT",
            "event_notification_configs[0].pubsub_topic_name",
        )
    for topic in BAD_TOPICS:
        state = {"id": "reg-t", "stateNotificationConfig": {"pubsubTopicName": topic}}
        assert_error(
            await create(api, state),
            400,
            "INVALID_ARGUMENT",
            "state_notification_config.pubsub_topic_name",
        )
    assert await registry_ids(api) == []


# CA certificates


def ca_credential(pem: str, fmt: object = "X509_CERTIFICATE_PEM") -> dict[str, Any]:
    return {"publicKeyCertificate": {"format": fmt, "certificate": pem}}


async def test_ca_certificate_gets_x509_details(api: Api) -> None:
    ca = make_ca("Acme Root")
    registry = await created(api, {"id": "reg-ca", "credentials": [ca_credential(ca.pem, 1)]})
    [credential] = registry["credentials"]
    certificate = credential["publicKeyCertificate"]
    assert certificate["format"] == "X509_CERTIFICATE_PEM"
    assert certificate["certificate"] == ca.pem
    details = certificate["x509Details"]
    assert details["issuer"] == "CN=Acme Root"
    assert details["subject"] == "CN=Acme Root"
    assert parse_timestamp(details["startTime"]) == ca.cert.not_valid_before_utc
    assert parse_timestamp(details["expiryTime"]) == ca.cert.not_valid_after_utc
    assert details["startTime"].endswith("Z") and details["expiryTime"].endswith("Z")
    assert "sha256" in details["signatureAlgorithm"].lower()
    assert details["publicKeyType"] == "EC"
    assert (await read(api, "reg-ca"))["credentials"] == registry["credentials"]


async def test_ca_certificate_format_may_be_left_unspecified(api: Api) -> None:
    ca = make_ca()
    registry = await created(
        api, {"id": "reg-ca0", "credentials": [{"publicKeyCertificate": {"certificate": ca.pem}}]}
    )
    assert registry["credentials"][0]["publicKeyCertificate"]["format"] == "X509_CERTIFICATE_PEM"


async def test_client_supplied_x509_details_are_replaced(api: Api) -> None:
    ca = make_ca("Real")
    credential = ca_credential(ca.pem)
    credential["publicKeyCertificate"]["x509Details"] = {"issuer": "CN=Forged"}
    registry = await created(api, {"id": "reg-forge", "credentials": [credential]})
    assert registry["credentials"][0]["publicKeyCertificate"]["x509Details"]["issuer"] == "CN=Real"


async def test_malformed_ca_credentials_are_refused(api: Api) -> None:
    field = "credentials[0].public_key_certificate"
    for credential, where in [
        (ca_credential("not a certificate"), f"{field}.certificate"),
        (ca_credential(""), f"{field}.certificate"),
        (
            ca_credential("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            f"{field}.certificate",
        ),
        (ca_credential(public_pem(es256_key())), f"{field}.certificate"),
        ({}, field),
        (
            ca_credential(make_ca().pem + "\x00"),
            "credentials.0.publicKeyCertificate.certificate",
        ),
        (
            {"publicKeyCertificate": {"format": 2, "certificate": "x"}},
            "credentials.0.publicKeyCertificate.format",
        ),
    ]:
        response = await create(api, {"id": "reg-bad", "credentials": [credential]})
        assert_error(response, 400, "INVALID_ARGUMENT", where)
    assert await registry_ids(api) == []


async def test_at_most_ten_ca_certificates(api: Api) -> None:
    cas = [make_ca(f"CA {i}") for i in range(11)]
    response = await create(
        api, {"id": "reg-11ca", "credentials": [ca_credential(ca.pem) for ca in cas]}
    )
    assert_error(response, 400, "INVALID_ARGUMENT", "credentials")
    assert await registry_ids(api) == []
    registry = await created(
        api, {"id": "reg-10ca", "credentials": [ca_credential(ca.pem) for ca in cas[:10]]}
    )
    assert len(registry["credentials"]) == 10


async def test_the_same_ca_certificate_twice_is_refused(api: Api) -> None:
    ca, other = make_ca("A"), make_ca("B")
    credentials = [ca_credential(ca.pem), ca_credential(other.pem), ca_credential(ca.pem)]
    response = await create(api, {"id": "reg-twice", "credentials": credentials})
    assert_error(response, 400, "INVALID_ARGUMENT", "credentials[2].public_key_certificate")
    assert await registry_ids(api) == []


# Update


async def test_update_applies_only_the_masked_fields_in_either_spelling(api: Api) -> None:
    await created(api, {"id": "reg-up", "eventNotificationConfigs": [{"pubsubTopicName": TOPIC}]})
    url = f"{REGISTRIES}/reg-up"
    body = {
        "mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"},
        "httpConfig": {"httpEnabledState": 2},
        "logLevel": "ERROR",
    }
    response = await api.client.patch(url, params={"updateMask": "mqttConfig"}, json=body)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert "httpConfig" not in updated and "logLevel" not in updated
    assert updated["eventNotificationConfigs"] == [{"pubsubTopicName": TOPIC}]

    response = await api.client.patch(
        url, params={"update_mask": "http_config.http_enabled_state,log_level"}, json=body
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["httpConfig"] == {"httpEnabledState": "HTTP_DISABLED"}
    assert updated["logLevel"] == "ERROR"
    assert await read(api, "reg-up") == updated


async def test_update_of_a_masked_field_absent_from_the_body_clears_it(api: Api) -> None:
    await created(
        api,
        {
            "id": "reg-clear",
            "eventNotificationConfigs": [{"pubsubTopicName": TOPIC}],
            "stateNotificationConfig": {"pubsubTopicName": TOPIC},
        },
    )
    response = await api.client.patch(
        f"{REGISTRIES}/reg-clear", params={"updateMask": "eventNotificationConfigs"}, json={}
    )
    assert response.status_code == 200, response.text
    registry = await read(api, "reg-clear")
    assert "eventNotificationConfigs" not in registry
    assert registry["stateNotificationConfig"] == {"pubsubTopicName": TOPIC}


async def test_update_credentials_recomputes_details(api: Api) -> None:
    await created(api, {"id": "reg-cred"})
    ca = make_ca("Later CA")
    response = await api.client.patch(
        f"{REGISTRIES}/reg-cred",
        params={"updateMask": "credentials"},
        json={"credentials": [ca_credential(ca.pem)]},
    )
    assert response.status_code == 200, response.text
    registry = await read(api, "reg-cred")
    details = registry["credentials"][0]["publicKeyCertificate"]["x509Details"]
    assert details["subject"] == "CN=Later CA"


REFUSED_UPDATES: list[tuple[dict[str, str], dict[str, Any], str]] = [
    ({}, {"logLevel": "INFO"}, "update_mask"),
    ({"updateMask": ""}, {"logLevel": "INFO"}, "update_mask"),
    ({"updateMask": " , "}, {"logLevel": "INFO"}, "update_mask"),
    ({"updateMask": "bogus"}, {"logLevel": "INFO"}, "update_mask"),
    ({"updateMask": "logLevel,mqttConfig.nope"}, {"logLevel": "INFO"}, "update_mask"),
    ({"updateMask": "id"}, {"id": "reg-other"}, "update_mask"),
    ({"updateMask": "name"}, {"name": "x"}, "update_mask"),
    ({"updateMask": "logLevel"}, {"id": "reg-other", "logLevel": "INFO"}, "device_registry.id"),
    (
        {"updateMask": "eventNotificationConfigs"},
        {"eventNotificationConfigs": [{"pubsubTopicName": "bad"}]},
        "event_notification_configs[0].pubsub_topic_name",
    ),
    (
        {"updateMask": "credentials"},
        {"credentials": [ca_credential("junk")]},
        "credentials[0].public_key_certificate.certificate",
    ),
    ({"updateMask": "logLevel"}, {"logLevel": "LOUD"}, "logLevel"),
]


async def test_refused_updates_change_nothing(api: Api) -> None:
    ca = make_ca()
    before = await created(
        api,
        {
            "id": "reg-keep",
            "eventNotificationConfigs": [{"pubsubTopicName": TOPIC}],
            "credentials": [ca_credential(ca.pem)],
            "logLevel": "DEBUG",
        },
    )
    for params, body, field in REFUSED_UPDATES:
        response = await api.client.patch(f"{REGISTRIES}/reg-keep", params=params, json=body)
        assert_error(response, 400, "INVALID_ARGUMENT", field)
        assert await read(api, "reg-keep") == before, (params, body)


async def test_update_of_a_missing_registry_is_not_found(api: Api) -> None:
    response = await api.client.patch(
        f"{REGISTRIES}/reg-none", params={"updateMask": "logLevel"}, json={"logLevel": "INFO"}
    )
    assert_error(response, 404, "NOT_FOUND")
    assert await registry_ids(api) == []


# Get and delete


async def test_get_missing_registry_is_not_found(api: Api) -> None:
    assert_error(await api.client.get(f"{REGISTRIES}/reg-none"), 404, "NOT_FOUND")
    assert_error(await api.client.get(f"{REGISTRIES}/x"), 400, "INVALID_ARGUMENT", "name")


async def test_delete_needs_an_empty_registry(api: Api) -> None:
    await created(api, {"id": "reg-del"})
    device = await api.client.post(f"{REGISTRIES}/reg-del/devices", json={"id": "dev-1"})
    assert device.status_code == 200, device.text
    assert_error(await api.client.delete(f"{REGISTRIES}/reg-del"), 400, "FAILED_PRECONDITION")
    assert await registry_ids(api) == ["reg-del"]
    got = await api.client.get(f"{REGISTRIES}/reg-del/devices/dev-1")
    assert got.status_code == 200

    assert (await api.client.delete(f"{REGISTRIES}/reg-del/devices/dev-1")).json() == {}
    response = await api.client.delete(f"{REGISTRIES}/reg-del")
    assert response.status_code == 200 and response.json() == {}
    assert await registry_ids(api) == []
    assert_error(await api.client.get(f"{REGISTRIES}/reg-del"), 404, "NOT_FOUND")
    assert_error(await api.client.delete(f"{REGISTRIES}/reg-del"), 404, "NOT_FOUND")


async def test_a_deleted_registry_leaves_no_iam_policy_behind(api: Api) -> None:
    await created(api, {"id": "reg-iam-del"})
    policy = {"bindings": [{"role": "roles/viewer", "members": ["user:a@example.com"]}]}
    response = await api.client.post(
        f"{REGISTRIES}/reg-iam-del:setIamPolicy", json={"policy": policy}
    )
    assert response.status_code == 200
    assert (await api.client.delete(f"{REGISTRIES}/reg-iam-del")).status_code == 200
    await created(api, {"id": "reg-iam-del"})
    fresh = await api.client.post(f"{REGISTRIES}/reg-iam-del:getIamPolicy", json={})
    assert fresh.json() == {"etag": "ACAB"}


# Limits and listing


async def test_at_most_100_registries_per_location(api: Api, manager: DeviceManager) -> None:
    location = LocationName(PROJECT, LOCATION)
    for i in range(100):
        await manager.create_registry(location, DeviceRegistry(id=f"bulk-{i:03d}"))
    response = await create(api, {"id": "one-too-many"})
    assert_error(response, 429, "RESOURCE_EXHAUSTED")
    assert_error(await api.client.get(f"{REGISTRIES}/one-too-many"), 404, "NOT_FOUND")
    # Other locations and projects have limits of their own.
    other = f"/v1/projects/{PROJECT}/locations/europe-west1/registries"
    assert (await create(api, {"id": "one-too-many"}, other)).status_code == 200
    # Deleting one makes room again.
    assert (await api.client.delete(f"{REGISTRIES}/bulk-000")).status_code == 200
    assert (await create(api, {"id": "one-too-many"})).status_code == 200


async def test_list_pages_through_every_registry_once(api: Api) -> None:
    ids = [f"reg-{i}" for i in range(7)]
    for registry_id in ids:
        await created(api, {"id": registry_id})
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"pageSize": "3", **({"pageToken": token} if token else {})}
        response = await api.client.get(REGISTRIES, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["deviceRegistries"]) <= 3
        seen += [r["id"] for r in body["deviceRegistries"]]
        pages += 1
        token = body.get("nextPageToken", "")
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    # snake_case query names work too, and an unset page size returns everything.
    response = await api.client.get(REGISTRIES, params={"page_size": "7"})
    assert "nextPageToken" not in response.json()
    assert len((await api.client.get(REGISTRIES)).json()["deviceRegistries"]) == 7


async def test_empty_list_is_an_empty_array(api: Api) -> None:
    response = await api.client.get(REGISTRIES)
    assert response.status_code == 200
    assert response.json() == {"deviceRegistries": []}


async def test_bad_paging_parameters_are_refused(api: Api) -> None:
    await created(api, {"id": "reg-page"})
    cases: list[tuple[dict[str, str], str]] = [
        ({"pageToken": "garbage!!"}, "page_token"),
        ({"pageToken": "djI6MTA"}, "page_token"),  # "v2:10"
        ({"pageToken": base64.urlsafe_b64encode(b"v1:" + b"9" * 30).decode()}, "page_token"),
        ({"pageSize": "-1"}, "page_size"),
        ({"pageSize": "ten"}, "pageSize"),
    ]
    for params, field in cases:
        response = await api.client.get(REGISTRIES, params=params)
        assert_error(response, 400, "INVALID_ARGUMENT", field)


# IAM


async def test_fresh_registry_policy_has_the_empty_etag(api: Api) -> None:
    await created(api, {"id": "reg-iam"})
    for body in ({}, {"options": {"requestedPolicyVersion": 3}}):
        response = await api.client.post(f"{REGISTRIES}/reg-iam:getIamPolicy", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == {"etag": "ACAB"}
    # The python client sends no body at all for some calls.
    response = await api.client.post(f"{REGISTRIES}/reg-iam:getIamPolicy")
    assert response.json() == {"etag": "ACAB"}


async def test_set_then_get_round_trips_bindings(api: Api) -> None:
    await created(api, {"id": "reg-iam"})
    policy = {
        "version": 1,
        "bindings": [
            {"role": "roles/viewer", "members": ["group:ops@example.com", "user:a@example.com"]},
            {
                "role": "roles/cloudiot.deviceController",
                "members": ["serviceAccount:sa@p1.iam.gserviceaccount.com"],
            },
        ],
    }
    response = await api.client.post(f"{REGISTRIES}/reg-iam:setIamPolicy", json={"policy": policy})
    assert response.status_code == 200, response.text
    written = response.json()
    assert written["bindings"] == policy["bindings"] and written["version"] == 1
    assert written["etag"] and written["etag"] != "ACAB"
    base64.b64decode(written["etag"], validate=True)
    got = await api.client.post(f"{REGISTRIES}/reg-iam:getIamPolicy", json={})
    assert got.json() == written


async def test_set_with_a_stale_etag_is_aborted_and_changes_nothing(api: Api) -> None:
    await created(api, {"id": "reg-iam"})
    url = f"{REGISTRIES}/reg-iam"
    first = {"bindings": [{"role": "roles/viewer", "members": ["user:a@example.com"]}]}
    # "ACAB" is the etag of the empty policy: a read-modify-write from a fresh read works.
    response = await api.client.post(
        f"{url}:setIamPolicy", json={"policy": {**first, "etag": "ACAB"}}
    )
    assert response.status_code == 200, response.text
    current = response.json()

    second = {"bindings": [{"role": "roles/editor", "members": ["user:b@example.com"]}]}
    for stale in ("ACAB", base64.b64encode(b"not-it").decode()):
        response = await api.client.post(
            f"{url}:setIamPolicy", json={"policy": {**second, "etag": stale}}
        )
        assert_error(response, 409, "ABORTED")
        assert (await api.client.post(f"{url}:getIamPolicy", json={})).json() == current

    response = await api.client.post(
        f"{url}:setIamPolicy", json={"policy": {**second, "etag": current["etag"]}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["bindings"] == second["bindings"]
    assert response.json()["etag"] != current["etag"]
    # Without an etag the write is unconditional.
    response = await api.client.post(f"{url}:setIamPolicy", json={"policy": first})
    assert response.status_code == 200
    assert (await api.client.post(f"{url}:getIamPolicy", json={})).json()["bindings"] == first[
        "bindings"
    ]


async def test_set_policy_refuses_bad_bindings(api: Api) -> None:
    await created(api, {"id": "reg-iam"})
    for bindings, field in [
        ([{"members": ["user:a@example.com"]}], "policy.bindings[0].role"),
        ([{"role": "roles/viewer\x00", "members": []}], "policy.bindings.0.role"),
        ([{"role": "roles/viewer", "members": ["user:\x00"]}], "policy.bindings.0.members"),
        ([{"role": "roles/viewer", "members": "user:a"}], "policy.bindings.0.members"),
        ([{"role": "roles/viewer", "members": ["someone"]}], "policy.bindings[0].members[0]"),
        # A person, group or service account is an email address; an admin token its id.
        ([{"role": "roles/viewer", "members": ["user:alice"]}], "policy.bindings[0].members[0]"),
        (
            [{"role": "roles/viewer", "members": ["user:a@example.com", "group:ops@"]}],
            "policy.bindings[0].members[1]",
        ),
        ([{"role": "roles/viewer", "members": ["serviceAccount:sa"]}], "policy.bindings[0]"),
        ([{"role": "roles/viewer", "members": ["user:\u212aevin@example.com"]}], "policy"),
        ([{"role": "roles/viewer", "members": ["adminToken:4fd55f95"]}], "policy.bindings[0]"),
        ([{"role": "roles/viewer", "members": ["adminToken:../x"]}], "policy.bindings[0]"),
        (
            [{"role": "roles/nonesuch", "members": ["user:a@example.com"]}],
            "policy.bindings[0].role",
        ),
        (
            [
                {
                    "role": "roles/viewer",
                    "members": ["user:a@example.com"],
                    "condition": {"title": "t", "expression": "request.time < timestamp('2030')"},
                }
            ],
            "policy.bindings[0].condition",
        ),
    ]:
        response = await api.client.post(
            f"{REGISTRIES}/reg-iam:setIamPolicy", json={"policy": {"bindings": bindings}}
        )
        assert_error(response, 400, "INVALID_ARGUMENT", field)
    got = await api.client.post(f"{REGISTRIES}/reg-iam:getIamPolicy", json={})
    assert got.json() == {"etag": "ACAB"}


async def test_policy_of_a_missing_registry_is_not_found(api: Api) -> None:
    for verb in ("getIamPolicy", "setIamPolicy"):
        response = await api.client.post(f"{REGISTRIES}/reg-none:{verb}", json={})
        assert_error(response, 404, "NOT_FOUND")


EVERY_PERMISSION = sorted(PERMISSIONS["owner"] | {"cloudiot.unknown.thing"})
WRITE_VERBS = {
    "create",
    "update",
    "delete",
    "updateConfig",
    "sendCommand",
    "bindGateway",
    "unbindGateway",
    "setIamPolicy",
    "publish",
    "manage",
}
CLOUDIOT_READS = {
    "cloudiot.registries.get",
    "cloudiot.registries.list",
    "cloudiot.registries.getIamPolicy",
    "cloudiot.devices.get",
    "cloudiot.devices.list",
}


async def granted(client: httpx.AsyncClient, registry: str) -> set[str]:
    response = await client.post(
        f"{REGISTRIES}/{registry}:testIamPermissions", json={"permissions": EVERY_PERMISSION}
    )
    assert response.status_code == 200, response.text
    return set(response.json().get("permissions", []))


async def test_test_iam_permissions_answers_by_role(api: Api) -> None:
    await created(api, {"id": "reg-perm"})
    owner = await granted(api.client, "reg-perm")
    # Only what applies to a registry: no Pub/Sub, firmware, token or project permissions.
    assert owner == {p for p in PERMISSIONS["owner"] if p.startswith(APPLICABLE["registries"])}
    assert {"cloudiot.registries.setIamPolicy", "ironcore.devices.rotateCredentials"} <= owner
    assert not any(p.startswith(("pubsub.", "resourcemanager.")) for p in owner), owner
    assert "ironcore.tokens.manage" not in owner
    async with await api.as_role("editor") as editor_client:
        editor = await granted(editor_client, "reg-perm")
    assert "cloudiot.registries.setIamPolicy" not in editor
    assert {"cloudiot.devices.create", "cloudiot.devices.updateConfig"} <= editor
    assert editor == {p for p in PERMISSIONS["editor"] if p in owner} and editor < owner
    async with await api.as_role("viewer") as viewer_client:
        viewer = await granted(viewer_client, "reg-perm")
    assert viewer == {p for p in PERMISSIONS["viewer"] if p in owner} and viewer < editor
    # Reads only: every cloudiot read, and no permission any write route checks.
    assert {p for p in viewer if p.startswith("cloudiot.")} == CLOUDIOT_READS
    assert not any(p.rsplit(".", 1)[1] in WRITE_VERBS for p in viewer), viewer


async def test_test_iam_permissions_of_a_missing_registry_is_empty(api: Api) -> None:
    response = await api.client.post(
        f"{REGISTRIES}/reg-none:testIamPermissions", json={"permissions": EVERY_PERMISSION}
    )
    assert response.status_code == 200
    assert response.json() == {}
    response = await api.client.post(
        f"{REGISTRIES}/reg-none:testIamPermissions", json={"permissions": []}
    )
    assert response.json() == {}
