"""`ironcore topics …`, `ironcore subscriptions …` and `ironcore events tail`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer

from ironcore.cli.client import Context, err, fail, out, payload_text

topics_app = typer.Typer(
    help="Topics of the embedded event log (Pub/Sub shapes).", no_args_is_help=True
)
subscriptions_app = typer.Typer(help="Subscriptions to topics.", no_args_is_help=True)
events_app = typer.Typer(help="Watch events as they arrive.", no_args_is_help=True)


def _project(c: Context) -> str:
    return f"/v1/projects/{c.project}"


def _topic_path(c: Context, topic: str) -> str:
    """Accept a bare topic id or a full projects/{p}/topics/{t} name."""
    if topic.startswith("projects/"):
        return f"/v1/{topic}"
    return f"{_project(c)}/topics/{topic}"


def _topic_name(c: Context, topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{c.project}/topics/{topic}"


@topics_app.command("create")
def topics_create(
    ctx: typer.Context,
    topic: str,
    backend: Annotated[str, typer.Option(help="embedded (default) or nats")] = "embedded",
) -> None:
    """Create a topic."""
    c: Context = ctx.obj
    created = c.call("PUT", _topic_path(c, topic), {"backend": backend})
    c.show(created, ["name", "backend"], [created])


@topics_app.command("list")
def topics_list(ctx: typer.Context) -> None:
    """List topics."""
    c: Context = ctx.obj
    data = c.call("GET", f"{_project(c)}/topics")
    c.show(data, ["name", "backend"], data.get("topics", []))


@topics_app.command("delete")
def topics_delete(ctx: typer.Context, topic: str) -> None:
    """Delete a topic."""
    c: Context = ctx.obj
    c.call("DELETE", _topic_path(c, topic))
    c.show({"deleted": topic}, ["deleted"], [{"deleted": topic}])


def _row(sub: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": sub["name"],
        "topic": sub["topic"],
        "ackDeadlineSeconds": sub["ackDeadlineSeconds"],
        "push": sub.get("pushConfig", {}).get("pushEndpoint", ""),
        "deadLetter": sub.get("deadLetterPolicy", {}).get("deadLetterTopic", ""),
    }


@subscriptions_app.command("create")
def subscriptions_create(
    ctx: typer.Context,
    subscription: str,
    topic: Annotated[str, typer.Option(help="Topic id or projects/P/topics/T")],
    ack_deadline: Annotated[int, typer.Option(help="Seconds (10 to 600)")] = 10,
    push_endpoint: Annotated[str, typer.Option(help="Deliver by HTTP POST (webhook)")] = "",
    dead_letter_topic: Annotated[str, typer.Option(help="Where undeliverable messages go")] = "",
    max_delivery_attempts: Annotated[
        int, typer.Option(help="Before dead-lettering (5 to 100)")
    ] = 0,
) -> None:
    """Create a pull or push subscription; a push subscription's signing secret is shown once."""
    c: Context = ctx.obj
    body: dict[str, Any] = {"topic": _topic_name(c, topic), "ackDeadlineSeconds": ack_deadline}
    if push_endpoint:
        body["pushConfig"] = {"pushEndpoint": push_endpoint}
    if dead_letter_topic:
        body["deadLetterPolicy"] = {
            "deadLetterTopic": _topic_name(c, dead_letter_topic),
            "maxDeliveryAttempts": max_delivery_attempts,
        }
    created = c.call("PUT", f"{_project(c)}/subscriptions/{subscription}", body)
    c.show(created, list(_row(created)), [_row(created)])
    secret = created.get("pushConfig", {}).get("signingSecret")
    if secret and not c.as_json:
        out.print(f"Webhook signing secret (shown once): {secret}", highlight=False)


@subscriptions_app.command("list")
def subscriptions_list(ctx: typer.Context) -> None:
    """List subscriptions."""
    c: Context = ctx.obj
    data = c.call("GET", f"{_project(c)}/subscriptions")
    subs = data.get("subscriptions", [])
    c.show(
        data, ["name", "topic", "ackDeadlineSeconds", "push", "deadLetter"], [_row(s) for s in subs]
    )


@subscriptions_app.command("delete")
def subscriptions_delete(ctx: typer.Context, subscription: str) -> None:
    """Delete a subscription."""
    c: Context = ctx.obj
    c.call("DELETE", f"{_project(c)}/subscriptions/{subscription}")
    c.show({"deleted": subscription}, ["deleted"], [{"deleted": subscription}])


@subscriptions_app.command("pull")
def subscriptions_pull(
    ctx: typer.Context,
    subscription: str,
    max_messages: Annotated[int, typer.Option(help="At most this many (1 to 1000)")] = 10,
    ack: Annotated[bool, typer.Option("--ack/--no-ack", help="Acknowledge what was pulled")] = True,
) -> None:
    """Pull messages (and acknowledge them, unless --no-ack)."""
    c: Context = ctx.obj
    path = f"{_project(c)}/subscriptions/{subscription}"
    data = c.call("POST", f"{path}:pull", {"maxMessages": max_messages})
    received = data.get("receivedMessages", [])
    if ack and received:
        c.call("POST", f"{path}:acknowledge", {"ackIds": [m["ackId"] for m in received]})
    rows = [
        {
            "messageId": m["message"]["messageId"],
            "publishTime": m["message"]["publishTime"],
            "attributes": m["message"].get("attributes", {}),
            "data": payload_text(m["message"].get("data", "")),
        }
        for m in received
    ]
    c.show(data, ["messageId", "publishTime", "attributes", "data"], rows)


@events_app.command("tail")
def events_tail(
    ctx: typer.Context,
    topic: str,
    count: Annotated[int, typer.Option(help="Stop after this many events (0: never)")] = 0,
) -> None:
    """Print every event published to a topic from now on, one per line."""
    c: Context = ctx.obj
    if not c.token:
        fail("no admin token: set IRONCORE_TOKEN or pass --token")
    path = _topic_path(c, topic).replace("/v1/", "/ironcore/v1/", 1) + ":tail"
    url = c.server.rstrip("/") + path
    try:
        with httpx.stream(
            "GET",
            url,
            params={"limit": count},
            headers={"Authorization": f"Bearer {c.token}"},
            timeout=httpx.Timeout(10, read=None),
        ) as response:
            if response.status_code >= 400:
                response.read()
                error = response.json().get("error", {})
                fail(f"{error.get('status', response.status_code)}: {error.get('message', '')}")
            for line in response.iter_lines():
                if line.startswith(": tailing"):
                    err.print(f"tailing {_topic_name(c, topic)} (Ctrl-C to stop)", highlight=False)
                if not line.startswith("data: "):
                    continue
                message = json.loads(line[len("data: ") :])
                if c.as_json:
                    print(json.dumps(message), flush=True)
                else:
                    attrs = message.get("attributes", {})
                    who = attrs.get("deviceId", "-")
                    sub = f"/{attrs['subFolder']}" if "subFolder" in attrs else ""
                    data = payload_text(message.get("data", ""))
                    print(f"{message['publishTime']} {who}{sub} {data}", flush=True)
    except httpx.HTTPError as error:
        fail(f"cannot reach ironcore at {c.server}: {error}")
